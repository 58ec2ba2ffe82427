package server

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/migrate"
	"github.com/pullwake/pullwake/internal/pglisten"
	"github.com/pullwake/pullwake/server/tokens"
)

// StreamHandler serves /v1/stream/ (package streams implements it).
type StreamHandler interface {
	http.Handler
	// Notify wakes this process's live readers of path.
	Notify(path string)
	// HandleNotification takes a payload of the streams NOTIFY channel.
	HandleNotification(payload string)
	Close()
}

// Metrics receives lifecycle measurements (package metrics implements it).
type Metrics interface {
	ClaimStarted(d time.Duration)
	ClaimNone(d time.Duration)
	Released(outcome string, d time.Duration)
	Expired(n int)
	Handler() http.Handler
}

// Config is everything the server needs; zero values get defaults.
type Config struct {
	Pool       *pgxpool.Pool
	ConnString string // for the dedicated LISTEN connection
	Tenant     string
	PublicURL  string // base of callback URLs, no trailing slash
	AdminToken string // "" = dev mode: management routes are open

	DefaultLeaseTTL time.Duration // claim lease when a claim names none (30s)
	MinLeaseTTL     time.Duration // 1s
	MaxLeaseTTL     time.Duration // 10m
	SweepInterval   time.Duration // 5s
	Retention       time.Duration // ended claims and finished wakes older than this are deleted; 0 keeps all
	RequestTimeout  time.Duration // 15s: no request waits on the database longer

	Tokens        *tokens.Store
	Streams       StreamHandler
	StreamChannel string // NOTIFY channel of the stream handler ("" = none)
	Metrics       Metrics
	// Publisher, when set, sends claim-end notifications after commit
	// (batched, outside the writing transaction); without it release_claim
	// notifies inside its transaction.
	Publisher Publisher
	Logger    *slog.Logger
}

// Publisher sends a NOTIFY after the fact (package pgnotify implements it).
type Publisher interface {
	Publish(channel, payload string)
}

// Server is pullwake's HTTP server and its background services.
type Server struct {
	cfg      Config
	pool     *pgxpool.Pool
	q        *db.Queries
	tokens   *tokens.Store
	log      *slog.Logger
	metrics  Metrics
	migrator *migrate.Migrator
	sweeper  *Sweeper
	listener *pglisten.Listener
	mux      *http.ServeMux

	runnerHashes sync.Map // runner id -> []byte token hash (tokens never change)
}

// New builds a server. Call Start for the sweeper and listener.
func New(cfg Config) (*Server, error) {
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	cfg.DefaultLeaseTTL = cmp.Or(cfg.DefaultLeaseTTL, 30*time.Second)
	cfg.MinLeaseTTL = cmp.Or(cfg.MinLeaseTTL, time.Second)
	cfg.MaxLeaseTTL = cmp.Or(cfg.MaxLeaseTTL, 10*time.Minute)
	cfg.SweepInterval = cmp.Or(cfg.SweepInterval, 5*time.Second)
	cfg.RequestTimeout = cmp.Or(cfg.RequestTimeout, 15*time.Second)
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Tokens == nil {
		cfg.Tokens = tokens.New()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	m, err := migrate.New(cfg.Pool)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		pool:     cfg.Pool,
		q:        db.New(),
		tokens:   cfg.Tokens,
		log:      cfg.Logger,
		metrics:  cfg.Metrics,
		migrator: m,
	}
	s.sweeper = NewSweeper(SweeperConfig{
		Pool: cfg.Pool, Tenant: cfg.Tenant, Interval: cfg.SweepInterval,
		Retention: cfg.Retention, Tokens: cfg.Tokens, Metrics: cfg.Metrics, Logger: cfg.Logger,
	})
	if cfg.ConnString != "" {
		s.listener = pglisten.New(cfg.ConnString, cfg.Logger)
		s.listener.Handle(ClaimsChannel, s.onClaimNotification)
		s.listener.OnConnect(s.reconcileTokens)
		if cfg.Streams != nil && cfg.StreamChannel != "" {
			s.listener.Handle(cfg.StreamChannel, cfg.Streams.HandleNotification)
		}
	}
	s.routes()
	return s, nil
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Tokens is the server's write-token store.
func (s *Server) Tokens() *tokens.Store { return s.tokens }

// Listener is the claim listener (nil without a ConnString).
func (s *Server) Listener() *pglisten.Listener { return s.listener }

// Sweeper is the lease sweeper.
func (s *Server) Sweeper() *Sweeper { return s.sweeper }

// Start runs the sweeper and the listener until Stop.
func (s *Server) Start(ctx context.Context) {
	if s.listener != nil {
		s.listener.Start(ctx)
	}
	s.sweeper.Start(ctx)
}

// Stop ends the background services and waits for them.
func (s *Server) Stop() {
	s.sweeper.Stop()
	if s.listener != nil {
		s.listener.Stop()
	}
	if s.cfg.Streams != nil {
		s.cfg.Streams.Close()
	}
	s.migrator.Close()
}

func (s *Server) routes() {
	mux := http.NewServeMux()
	h := func(pattern string, fn func(http.ResponseWriter, *http.Request) error) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
			defer cancel()
			r = r.WithContext(ctx)
			if err := fn(w, r); err != nil {
				s.fail(w, r, err)
			}
		})
	}
	admin := func(fn func(http.ResponseWriter, *http.Request) error) func(http.ResponseWriter, *http.Request) error {
		return func(w http.ResponseWriter, r *http.Request) error {
			if err := s.requireAdmin(r); err != nil {
				return err
			}
			return fn(w, r)
		}
	}
	runner := func(fn func(http.ResponseWriter, *http.Request) error) func(http.ResponseWriter, *http.Request) error {
		return func(w http.ResponseWriter, r *http.Request) error {
			if err := s.requireRunner(r); err != nil {
				return err
			}
			return fn(w, r)
		}
	}

	h("PUT /entities/{type}/{id}", admin(s.spawnEntity))
	h("GET /entities/{type}/{id}", admin(s.getEntity))
	h("POST /entities/{type}/{id}", admin(s.sendToEntity))
	h("DELETE /entities/{type}/{id}", admin(s.stopEntity))
	h("GET /entities", admin(s.listEntities))
	// The same entity routes under Electric's prefix; a send there also
	// takes the sending entity's write token (electricSend).
	h("PUT /_electric/entities/{type}/{id}", admin(s.spawnEntity))
	h("GET /_electric/entities/{type}/{id}", admin(s.getEntity))
	h("POST /_electric/entities/{type}/{id}/send", s.electricSend)
	h("DELETE /_electric/entities/{type}/{id}", admin(s.stopEntity))

	h("POST /_electric/entity-types", admin(s.upsertEntityType))
	h("GET /_electric/entity-types", admin(s.listEntityTypes))
	h("GET /_electric/entity-types/{name}", admin(s.getEntityType))
	h("DELETE /_electric/entity-types/{name}", admin(s.deleteEntityType))

	h("POST /_electric/runners", admin(s.registerRunner))
	h("GET /_electric/runners", admin(s.listRunners))
	h("GET /_electric/runners/{id}", admin(s.getRunner))
	h("POST /_electric/runners/{id}/enable", admin(s.setRunnerStatus("enabled")))
	h("POST /_electric/runners/{id}/disable", admin(s.setRunnerStatus("disabled")))
	h("POST /_electric/runners/{id}/heartbeat", runner(s.runnerHeartbeat))
	h("POST /_electric/runners/{id}/claim", runner(s.claim))
	h("GET /_electric/runners/{id}/health", runner(s.runnerHealth))

	h("POST /_electric/wake-callbacks/{consumer_id}", s.wakeCallback)

	h("GET /_electric/claims", admin(s.listClaims))
	h("POST /_electric/claims/{consumer_id}/{epoch}/release", admin(s.forceRelease))

	h("GET /healthz", func(w http.ResponseWriter, r *http.Request) error {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return nil
	})
	h("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", s.metrics.Handler())
	if s.cfg.Streams != nil {
		mux.Handle("/v1/stream/", s.cfg.Streams)
	}
	// Runners' wake streams: read with the runner's token, never written by clients.
	mux.HandleFunc("/v1/stream/runners/{id}/wake", s.wakeStream)
	mux.HandleFunc("/runners/{id}/wake", s.wakeStream)
	h("/", func(w http.ResponseWriter, r *http.Request) error {
		return errf(http.StatusNotFound, "NOT_FOUND", "no route for %s %s", r.Method, r.URL.Path)
	})
	s.mux = mux
}

// readyz answers 200 when the database answers and its schema is at the
// newest embedded migration, 503 with the reason otherwise.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if err := s.pool.Ping(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reason": "database unreachable: " + err.Error()})
		return nil
	}
	cur, latest, err := s.migrator.Versions(ctx)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reason": "cannot read schema version: " + err.Error()})
		return nil
	}
	if cur != latest {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable",
			"reason": "schema at migration " + itoa(cur) + ", want " + itoa(latest) + ": run pullwake migrate up", "schema_version": cur, "latest_version": latest})
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "schema_version": cur})
	return nil
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

type nopMetrics struct{}

func (nopMetrics) ClaimStarted(time.Duration)     {}
func (nopMetrics) ClaimNone(time.Duration)        {}
func (nopMetrics) Released(string, time.Duration) {}
func (nopMetrics) Expired(int)                    {}
func (nopMetrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
}
