# pullwake: `make run` serves, `make test` tests. Both work from a clean clone:
# they find or start PostgreSQL (installing it with apt-get when missing) and
# fetch Go tools through the module proxy.
SHELL := /bin/bash
GO ?= go
BIN := bin/pullwake

.PHONY: run stop clean test build node-deps schema generate migration check-generated ci conformance bench vet api-check api-generate

# The version `pullwake version` prints: git describe (tag, commits since,
# abbreviated hash, -dirty for uncommitted changes), or "dev" outside git.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/pullwake

run: build
	scripts/run.sh

# Stops the private PostgreSQL clusters that make run and make test may have
# started (.data/pg on port 55432, .data/pgtest on 55433, .data/pgtest-logical
# on 55434 for the shape tests); their data stays.
stop:
	scripts/pg.sh stop .data/pg
	scripts/pg.sh stop .data/pgtest
	scripts/pg.sh stop .data/pgtest-logical

# Stops them and removes them, their data, bin/, and the Node test
# projects' node_modules.
clean: stop
	rm -rf .data bin test/*/node_modules

# The Node test projects' packages (test/*/), from their lockfiles. make test
# does this by itself (internal/nodetest: npm ci when a lockfile changed);
# this target does it ahead, e.g. before working offline.
NODE_PROJECTS := $(wildcard test/*/package-lock.json)
node-deps:
	@for lock in $(NODE_PROJECTS); do d=$$(dirname $$lock); echo "npm ci in $$d"; \
		(cd $$d && npm ci --no-audit --no-fund --loglevel=error) || exit 1; \
		sha256sum $$lock | cut -d' ' -f1 > $$d/node_modules/.pullwake-lock-sha256; done

test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 10m ./...

# sql/schema.sql from the migrations (needs a PostgreSQL; found or started).
schema:
	scripts/schema.sh

# The goose migration from sql/: functions, triggers and views are changed in
# their sql/ file, then `make migration name=short_name` writes
# migrations/<next>_<name>.sql with sql/'s definitions of what differs (Up)
# and the previous ones (Down), proved on a scratch database (needs a
# PostgreSQL; found or started). Then make schema and make generate.
migration:
	@test -n "$(name)" || { echo "usage: make migration name=short_name" >&2; exit 2; }
	admin=$$(scripts/testdb-url.sh) && $(GO) run ./internal/tools/sqlmigration -admin "$$admin" -name "$(name)"

# db/ from queries/ and sql/ (schema.sql, then the function sources; see
# sqlc.yaml) with the pinned sqlc (go.mod tool).
generate:
	$(GO) tool sqlc generate

# Fails when sql/schema.sql or the sqlc output is stale.
check-generated:
	mkdir -p .data
	scripts/schema.sh .data/schema.check.sql
	diff -u sql/schema.sql .data/schema.check.sql || { echo "sql/schema.sql is stale: run make schema" >&2; exit 1; }
	$(GO) tool sqlc diff || { echo "db/ is stale: run make generate" >&2; exit 1; }

# The API reference against independent tools, at pinned versions: Redocly's
# linter (rules in redocly.yaml, waivers with reasons in
# .redocly.lint-ignore.yaml; needs node/npm) and oapi-codegen (go.mod tool),
# whose client in api/client/ must be what the document generates now.
REDOCLY_CLI := @redocly/cli@2.77.0
api-check:
	npx --yes $(REDOCLY_CLI) lint api/openapi.yaml
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(GO) tool oapi-codegen -config api/client/oapi-codegen.yaml -o "$$tmp/client.gen.go" api/openapi.yaml && \
	if ! cmp -s api/client/client.gen.go "$$tmp/client.gen.go"; then \
		diff -u api/client/client.gen.go "$$tmp/client.gen.go" | head -40; \
		echo "api/client/client.gen.go is stale: run make api-generate" >&2; exit 1; \
	fi

# api/client/client.gen.go from api/openapi.yaml with the pinned oapi-codegen.
api-generate:
	$(GO) generate ./api/client/

ci: check-generated test

# Durable Streams conformance suite against `pullwake serve` on a fresh
# database; fails below the figure reached (needs node/npm).
conformance:
	scripts/conformance.sh
