package server

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/migrate"
	"github.com/pullwake/pullwake/internal/pglisten"
	"github.com/pullwake/pullwake/internal/secret"
	"github.com/pullwake/pullwake/internal/webhooksig"
	"github.com/pullwake/pullwake/server/entitytypes"
	"github.com/pullwake/pullwake/server/httpx"
	"github.com/pullwake/pullwake/server/reconcile"
	"github.com/pullwake/pullwake/server/shapes"
	"github.com/pullwake/pullwake/server/statuspage"
	"github.com/pullwake/pullwake/server/subscriptions"
	"github.com/pullwake/pullwake/server/sweeper"
	"github.com/pullwake/pullwake/server/tokens"
	"github.com/pullwake/pullwake/server/wakepublish"
	"github.com/pullwake/pullwake/server/writeauth"
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
	// InstrumentHTTP wraps the handler of a route registered with pattern
	// so it records each request it answers (by route pattern, method and
	// status class); routes() wraps every route with it once.
	InstrumentHTTP(pattern string, h http.Handler) http.Handler
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
	// WakeEventResend (5s): the wake-event backstop's bound (sweeper.Config).
	WakeEventResend time.Duration
	Retention       time.Duration // ended claims and finished wakes older than this are deleted; 0 keeps all
	// WakePublishInterval (50ms) is how often the wake-event log is
	// published when no commit of this server kicked the publisher: the
	// bound on how late an event of a wake queued elsewhere appears.
	// Negative: this server runs no publisher (others publish).
	WakePublishInterval time.Duration
	RequestTimeout      time.Duration // 15s: no request waits on the database longer
	// ReconcileInterval (1s) is how often the token maps (write tokens, the
	// runner-token cache) are re-checked against the database: a claim
	// that ended anywhere loses its write token here within this interval
	// plus one query, whatever happened to its notification.
	ReconcileInterval time.Duration
	// ListenPingInterval (1s) and ListenSilentAfter (3s): the LISTEN
	// connection notifies itself every ping interval and is reconnected,
	// and reported by /readyz, when it heard nothing for silent-after.
	ListenPingInterval time.Duration
	ListenSilentAfter  time.Duration

	Tokens        *tokens.Store
	Streams       StreamHandler
	StreamChannel string // NOTIFY channel of the stream handler ("" = none)
	Metrics       Metrics
	// Publisher, when set, sends claim-end notifications after commit
	// (batched, outside the writing transaction); without it release_claim
	// notifies inside its transaction.
	Publisher Publisher
	Logger    *slog.Logger
	// GroupCommit runs concurrent releases and claims as shared
	// transactions (server/groupcommit.go); BatchObserver, when set, is
	// told each batch's transition and size.
	GroupCommit bool
	// GroupCommitInFlight is how many batches of one transition may run
	// at once (default 1).
	GroupCommitInFlight int
	BatchObserver       func(transition string, size int)
	// WebhookSigner signs push deliveries; its public key is served at
	// /__ds/jwks.json. nil = a fresh key (every instance must share one).
	WebhookSigner *webhooksig.Signer
	// RequireEntityTypes refuses a spawn under /entities whose type is not
	// registered (/_electric/entities always refuses one).
	RequireEntityTypes bool
	// Shapes serves Electric's shape API (server/shapes); nil = the shape
	// routes are not mounted.
	Shapes *shapes.Handler
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
	gate     *writeauth.Gate // tokens, then the claim row a signed token names
	log      *slog.Logger
	metrics  Metrics
	migrator *migrate.Migrator
	sw       *sweeper.Sweeper
	listener *pglisten.Listener
	recon    *reconcile.Reconciler
	wakes    *wakeWatcher           // wakes live readers of wake streams
	wakePub  *wakepublish.Publisher // publishes the wake-event log to the wake streams
	types    *entitytypes.Service   // /_electric/entity-types and the typed validation
	subs     *subscriptions.Service // /__ds/subscriptions/{id} and /__ds/jwks.json
	page     *statuspage.Handler    // the status page's embedded files (/status/)
	// validator checks spawns and sends against entity types (dialect.go;
	// the entity types' service).
	validator entityValidator
	mux       *http.ServeMux
	handler   http.Handler // mux behind the path rule (httpx.PathGuard)
	patterns  []string     // the mux's patterns, in registration order (Routes)
	// adminHash is the SHA-256 of the admin token: requests are compared
	// hash to hash, in time independent of what they carry.
	adminHash []byte
	batch     *batchers // nil unless cfg.GroupCommit

	// runnerTokens caches runner id -> token hash (auth.go). A rotation or
	// deletion drops the entry at once through the runners' NOTIFY (or
	// Forget on this instance), and within ReconcileInterval through the
	// reconcile timer when the notification is lost.
	runnerTokens runnerTokenCache
}

// New builds a server. Call Start for the sweeper and listener.
func New(cfg Config) (*Server, error) {
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	cfg.DefaultLeaseTTL = cmp.Or(cfg.DefaultLeaseTTL, 30*time.Second)
	cfg.MinLeaseTTL = cmp.Or(cfg.MinLeaseTTL, time.Second)
	cfg.MaxLeaseTTL = cmp.Or(cfg.MaxLeaseTTL, 10*time.Minute)
	cfg.SweepInterval = cmp.Or(cfg.SweepInterval, 5*time.Second)
	cfg.RequestTimeout = cmp.Or(cfg.RequestTimeout, 15*time.Second)
	cfg.ReconcileInterval = cmp.Or(cfg.ReconcileInterval, time.Second)
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
	if cfg.WebhookSigner == nil {
		cfg.WebhookSigner = webhooksig.Generate()
	}
	m, err := migrate.New(cfg.Pool)
	if err != nil {
		return nil, err
	}
	s := &Server{
		validator: acceptAll{},
		cfg:       cfg,
		pool:      cfg.Pool,
		q:         db.New(),
		tokens:    cfg.Tokens,
		gate:      writeauth.New(cfg.Tokens, cfg.Pool, cfg.Tenant),
		log:       cfg.Logger,
		metrics:   cfg.Metrics,
		migrator:  m,
	}
	if cfg.AdminToken != "" {
		s.adminHash = secret.Hash(cfg.AdminToken)
	}
	s.recon = reconcile.New(reconcile.Config{
		Pool: cfg.Pool, Tenant: cfg.Tenant, Interval: cfg.ReconcileInterval,
		Tokens: cfg.Tokens, Runners: &s.runnerTokens, Logger: cfg.Logger,
	})
	s.sw = sweeper.New(sweeper.Config{
		Pool: cfg.Pool, Tenant: cfg.Tenant, Interval: cfg.SweepInterval,
		Retention: cfg.Retention, WakeEventResend: cfg.WakeEventResend, Tokens: cfg.Tokens, Metrics: cfg.Metrics, Logger: cfg.Logger,
	})
	if cfg.ConnString != "" {
		s.listener = pglisten.New(pglisten.Config{
			ConnString: cfg.ConnString, Logger: cfg.Logger, Pinger: cfg.Pool,
			PingInterval: cfg.ListenPingInterval, SilentAfter: cfg.ListenSilentAfter,
		})
		s.listener.Handle(reconcile.ClaimsChannel, s.recon.OnClaimNotification)
		s.listener.Handle(reconcile.RunnerTokensChannel, s.recon.OnRunnerTokenNotification)
		s.listener.OnConnect(func(ctx context.Context) { s.recon.RunOnce(ctx) })
		if cfg.Streams != nil && cfg.StreamChannel != "" {
			s.listener.Handle(cfg.StreamChannel, cfg.Streams.HandleNotification)
		}
	}
	s.wakes = newWakeWatcher(cfg.Pool, cfg.Tenant, s.wakeLocalReaders, cfg.Logger)
	s.wakePub = wakepublish.New(wakepublish.Config{
		Pool: cfg.Pool, Interval: cfg.WakePublishInterval, Logger: cfg.Logger,
		// Events are in: wake this server's live readers of wake streams now.
		Published: func(int) { s.wakes.kick() },
	})
	if cfg.GroupCommit {
		s.batch = newBatchers(cfg.Pool, s.q, cfg.Tenant, cfg.Publisher == nil, cfg.GroupCommitInFlight, cfg.BatchObserver)
	}
	s.types = entitytypes.New(entitytypes.Config{
		Pool: cfg.Pool, Tenant: cfg.Tenant, Logger: cfg.Logger, RequireAdmin: s.requireAdmin,
	})
	s.validator = s.types
	s.subs = subscriptions.New(subscriptions.Config{
		Pool: cfg.Pool, Tenant: cfg.Tenant, PublicURL: cfg.PublicURL, Logger: cfg.Logger,
		WebhookSigner: cfg.WebhookSigner, RequireAdmin: s.requireAdmin,
	})
	if s.page, err = statuspage.New(); err != nil {
		return nil, err
	}
	s.routes()
	return s, nil
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// WakeEventsHeld is how long the oldest wake-event log row has waited
// unpublished (wakepublish.Publisher.HeldFor), for the metric.
func (s *Server) WakeEventsHeld() time.Duration { return s.wakePub.HeldFor() }

// Tokens is the server's write-token store.
func (s *Server) Tokens() *tokens.Store { return s.tokens }

// Listener is the claim listener (nil without a ConnString).
func (s *Server) Listener() *pglisten.Listener { return s.listener }

// Sweeper is the lease sweeper.
func (s *Server) Sweeper() *sweeper.Sweeper { return s.sw }

// Start runs the sweeper, the token reconciler and the listener until Stop.
func (s *Server) Start(ctx context.Context) {
	if s.batch != nil {
		s.batch.start(ctx)
	}
	if s.listener != nil {
		s.listener.Start(ctx)
	}
	s.recon.Start(ctx)
	s.sw.Start(ctx)
	s.wakes.Start(ctx)
	if s.cfg.WakePublishInterval >= 0 {
		s.wakePub.Start(ctx)
	}
}

// Stop ends the background services and waits for them.
func (s *Server) Stop() {
	s.wakePub.Stop()
	s.wakes.Stop()
	if s.batch != nil {
		s.batch.stop() // answers every queued release and claim
	}
	s.sw.Stop()
	s.recon.Stop()
	if s.listener != nil {
		s.listener.Stop()
	}
	if s.cfg.Streams != nil {
		s.cfg.Streams.Close()
	}
	s.migrator.Close()
}

// Routes lists the patterns the server's mux serves (http.ServeMux syntax),
// for tests that hold the API reference (api/openapi.yaml) to the router.
func (s *Server) Routes() []string { return slices.Clone(s.patterns) }

func (s *Server) routes() {
	mux := http.NewServeMux()
	// handle registers every route, and is where HTTP requests are
	// measured: by the route's pattern, never the raw path (the catch-all
	// "/" takes every path no other route serves).
	handle := func(pattern string, h http.Handler) {
		s.patterns = append(s.patterns, pattern)
		mux.Handle(pattern, s.metrics.InstrumentHTTP(pattern, h))
	}
	wrap := func(fn func(http.ResponseWriter, *http.Request) error) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
			defer cancel()
			r = r.WithContext(ctx)
			err := httpx.CheckText(r)
			if err == nil {
				err = fn(w, r)
			}
			if err != nil {
				httpx.Fail(s.log, w, r, err)
			}
		})
	}
	h := func(pattern string, fn func(http.ResponseWriter, *http.Request) error) { handle(pattern, wrap(fn)) }
	admin := func(fn httpx.HandlerFunc) httpx.HandlerFunc { return httpx.Guard(s.requireAdmin, fn) }
	runner := func(fn httpx.HandlerFunc) httpx.HandlerFunc { return httpx.Guard(s.requireRunner, fn) }

	pw, el := pullwakeEncoding{}, electricEncoding{}
	h("PUT /entities/{type}/{id}", admin(s.entityRoute(pw, s.spawnEntity)))
	h("GET /entities/{type}/{id}", admin(s.entityRoute(pw, s.getEntity)))
	h("POST /entities/{type}/{id}", admin(s.entityRoute(pw, s.sendToEntity)))
	h("DELETE /entities/{type}/{id}", admin(s.entityRoute(pw, s.stopEntity)))
	h("GET /entities", admin(s.entityRoute(pw, s.listEntities)))
	// The same handlers in Electric's dialect (dialect.go); a send, a tag
	// change also take the entity's write token.
	h("PUT /_electric/entities/{type}/{id}", admin(s.entityRoute(el, s.spawnEntity)))
	h("GET /_electric/entities/{type}/{id}", admin(s.entityRoute(el, s.getEntity)))
	h("GET /_electric/entities", admin(s.entityRoute(el, s.listEntities)))
	h("POST /_electric/entities/{type}/{id}/send", s.entityRoute(el, s.sendToEntity))
	h("DELETE /_electric/entities/{type}/{id}", admin(s.entityRoute(el, s.stopEntity)))
	h("POST /_electric/entities/{type}/{id}/signal", admin(s.entityRoute(el, s.signalEntity)))
	h("POST /_electric/entities/{type}/{id}/tags/{key}", s.entityRoute(el, s.setTag))
	h("DELETE /_electric/entities/{type}/{id}/tags/{key}", s.entityRoute(el, s.setTag))

	// Entity types (server/entitytypes), each behind the admin check.
	s.types.Routes(h)

	h("POST /_electric/runners", admin(s.registerRunner))
	h("GET /_electric/runners", admin(s.listRunners))
	h("GET /_electric/runners/{id}", admin(s.getRunner))
	h("POST /_electric/runners/{id}/enable", admin(s.setRunnerStatus("enabled")))
	h("POST /_electric/runners/{id}/disable", admin(s.setRunnerStatus("disabled")))
	h("POST /_electric/runners/{id}/heartbeat", runner(s.runnerHeartbeat))
	h("POST /_electric/runners/{id}/claim", runner(s.claim))
	h("GET /_electric/runners/{id}/health", runner(s.runnerHealth))

	h("POST /_electric/wake-callbacks/{consumer_id}", s.wakeCallback)

	// Webhook subscriptions (push delivery, server/subscriptions) and the
	// key deliveries are signed with.
	s.subs.Routes(h)

	h("GET /_electric/claims", admin(s.listClaims))
	h("POST /_electric/claims/{consumer_id}/{epoch}/release", admin(s.forceRelease))

	// Electric's shape API (server/shapes), guarded as the REST lists it
	// mirrors are; live reads wait up to their long-poll limit, so the
	// route has no request deadline of its own.
	if s.cfg.Shapes != nil {
		shape := func(w http.ResponseWriter, r *http.Request) {
			shapes.CORS(w, r)
			err := httpx.CheckText(r)
			if err == nil {
				err = httpx.Guard(s.requireAdmin, s.cfg.Shapes.Serve)(w, r)
			}
			if err != nil {
				httpx.Fail(s.log, w, r, err)
			}
		}
		for _, p := range []string{"/v1/shape", "/_electric/electric/v1/shape"} {
			handle("GET "+p, http.HandlerFunc(shape))
			handle("OPTIONS "+p, http.HandlerFunc(shapes.Preflight))
		}
	}

	health := func(w http.ResponseWriter, r *http.Request) error {
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return nil
	}
	h("GET /healthz", health)
	// Electric's liveness route: Electric's agents UI polls it and lists
	// nothing until it answers 200.
	h("GET /_electric/health", health)
	h("GET /readyz", s.readyz)
	// The status page (server/statuspage): its files are open to all; what
	// it shows comes from the shape endpoint, behind that endpoint's auth.
	handle("GET /status", http.RedirectHandler(statuspage.Prefix, http.StatusMovedPermanently))
	h("GET "+statuspage.Prefix, func(w http.ResponseWriter, r *http.Request) error {
		if !s.page.Has(r.URL.Path) {
			return httpx.Errorf(http.StatusNotFound, "NOT_FOUND", "the status page has no file %s", r.URL.Path)
		}
		s.page.ServeHTTP(w, r)
		return nil
	})
	handle("GET /metrics", s.metrics.Handler())
	if s.cfg.Streams != nil {
		handle("/v1/stream/", s.cfg.Streams)
	}
	// Runners' wake streams: read with the runner's token, never written by clients.
	handle("/v1/stream/runners/{id}/wake", http.HandlerFunc(s.wakeStream))
	handle("/runners/{id}/wake", http.HandlerFunc(s.wakeStream))
	// The catch-all takes every request no other pattern matches, including
	// a known path with a method it does not serve (the mux would answer
	// those 405 by itself, but "/" matches first): answer 405 with Allow then.
	// Streams are also served at the root, where Electric serves them
	// (rootStream), with the stream routes' own rules and deadlines; the
	// API's own paths answer 404 NOT_FOUND.
	notFound := wrap(func(w http.ResponseWriter, r *http.Request) error {
		if allow := allowedMethods(mux, r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			return httpx.Errorf(http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "method %s is not allowed on %s; allowed: %s",
				r.Method, r.URL.Path, strings.Join(allow, ", "))
		}
		return httpx.Errorf(http.StatusNotFound, "NOT_FOUND", "no route for %s %s", r.Method, r.URL.Path)
	})
	handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.rootStream(w, r) {
			notFound.ServeHTTP(w, r)
		}
	}))
	s.mux = mux
	s.handler = httpx.PathGuard(mux)
}

// allowedMethods lists the methods some pattern other than the catch-all
// serves for r's path, by asking the mux itself.
func allowedMethods(mux *http.ServeMux, r *http.Request) []string {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := mux.Handler(probe); pattern != "" && pattern != "/" {
			allow = append(allow, m)
		}
	}
	return allow
}

// readyz answers 200 when the database answers, its schema is at the
// newest embedded migration, the LISTEN connection is up and hears its own
// pings, and the token reconciler succeeded lately; 503 with the reason
// otherwise.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if s.listener != nil {
		if ok, why := s.listener.Status(); !ok {
			httpx.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reason": why})
			return nil
		}
	}
	if ok, why := s.recon.Status(); !ok {
		httpx.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reason": why})
		return nil
	}
	if err := s.pool.Ping(ctx); err != nil {
		httpx.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reason": "database unreachable: " + err.Error()})
		return nil
	}
	cur, latest, err := s.migrator.Versions(ctx)
	if err != nil {
		httpx.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reason": "cannot read schema version: " + err.Error()})
		return nil
	}
	if cur != latest {
		httpx.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable",
			"reason": "schema at migration " + itoa(cur) + ", want " + itoa(latest) + ": run pullwake migrate up", "schema_version": cur, "latest_version": latest})
		return nil
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"status": "ready", "schema_version": cur})
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

// InstrumentHTTP records nothing: the route's handler as it is.
func (nopMetrics) InstrumentHTTP(_ string, h http.Handler) http.Handler { return h }
