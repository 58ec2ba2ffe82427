package subscriptions

import (
	"cmp"
	"log/slog"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/webhooksig"
	"github.com/pullwake/pullwake/server/httpx"
)

// Config is what the subscription routes need; zero values get defaults,
// except Pool, WebhookSigner and RequireAdmin, which are required.
type Config struct {
	Pool      *pgxpool.Pool
	Tenant    string // "default"
	PublicURL string // base of the jwks_url a subscription names
	Logger    *slog.Logger
	// WebhookSigner is the key push deliveries are signed with: its id is
	// named by every subscription, its public half served at
	// /__ds/jwks.json.
	WebhookSigner *webhooksig.Signer
	// RequireAdmin is the server's admin check: every route but the JWKS
	// is behind it.
	RequireAdmin func(*http.Request) error
}

// Service serves the webhook subscriptions' routes.
type Service struct {
	cfg  Config
	pool *pgxpool.Pool
	q    *db.Queries
	log  *slog.Logger
}

// New returns the subscriptions' service over cfg.
func New(cfg Config) *Service {
	if cfg.Pool == nil || cfg.WebhookSigner == nil || cfg.RequireAdmin == nil {
		panic("subscriptions: Config.Pool, Config.WebhookSigner and Config.RequireAdmin are required")
	}
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{cfg: cfg, pool: cfg.Pool, q: db.New(), log: cfg.Logger}
}

// Routes registers the subscription routes and the JWKS with handle, the
// subscriptions behind the admin check. handle is the server's: the
// request deadline, the text check, the error answer and the metrics are
// its.
func (s *Service) Routes(handle func(pattern string, fn func(http.ResponseWriter, *http.Request) error)) {
	admin := func(fn httpx.HandlerFunc) httpx.HandlerFunc { return httpx.Guard(s.cfg.RequireAdmin, fn) }
	handle("PUT /__ds/subscriptions/{id}", admin(s.putSubscription))
	handle("GET /__ds/subscriptions/{id}", admin(s.getSubscription))
	handle("DELETE /__ds/subscriptions/{id}", admin(s.deleteSubscription))
	handle("GET /__ds/jwks.json", s.jwks)
}
