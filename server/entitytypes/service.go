package entitytypes

import (
	"cmp"
	"log/slog"
	"net/http"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/schemas"
	"github.com/pullwake/pullwake/server/httpx"
)

// Config is what the entity types need; zero values get defaults, except
// Pool and RequireAdmin, which are required.
type Config struct {
	Pool   *pgxpool.Pool
	Tenant string // "default"
	Logger *slog.Logger
	// Client calls serve endpoints. nil: a client that never follows a
	// redirect (the URL called is the one given).
	Client *http.Client
	// RequireAdmin is the server's admin check: every route of this
	// package is behind it.
	RequireAdmin func(*http.Request) error
}

// Service serves the entity-type routes and validates what spawns and
// sends carry against the registered types (ValidateSpawn, ValidateSend).
type Service struct {
	cfg       Config
	pool      *pgxpool.Pool
	q         *db.Queries
	log       *slog.Logger
	outbound  *http.Client
	validator *schemas.Validator
}

// New returns the entity types' service over cfg.
func New(cfg Config) *Service {
	if cfg.Pool == nil || cfg.RequireAdmin == nil {
		panic("entitytypes: Config.Pool and Config.RequireAdmin are required")
	}
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Client == nil {
		cfg.Client = newOutboundClient()
	}
	s := &Service{cfg: cfg, pool: cfg.Pool, q: db.New(), log: cfg.Logger, outbound: cfg.Client}
	s.validator = schemas.New(s.schemaSource)
	return s
}

// Routes registers the entity-type routes with handle, each behind the
// admin check. handle is the server's: the request deadline, the text
// check, the error answer and the metrics are its.
func (s *Service) Routes(handle func(pattern string, fn func(http.ResponseWriter, *http.Request) error)) {
	admin := func(fn httpx.HandlerFunc) httpx.HandlerFunc { return httpx.Guard(s.cfg.RequireAdmin, fn) }
	handle("POST /_electric/entity-types", admin(s.upsertEntityType))
	handle("GET /_electric/entity-types", admin(s.listEntityTypes))
	handle("GET /_electric/entity-types/{name}", admin(s.getEntityType))
	handle("DELETE /_electric/entity-types/{name}", admin(s.deleteEntityType))
	handle("PATCH /_electric/entity-types/{name}/schemas", admin(s.amendEntityTypeSchemas))
}
