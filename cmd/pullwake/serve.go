package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/connlimit"
	"github.com/pullwake/pullwake/internal/metrics"
	"github.com/pullwake/pullwake/internal/migrate"
	"github.com/pullwake/pullwake/internal/pgnotify"
	"github.com/pullwake/pullwake/server"
	"github.com/pullwake/pullwake/server/shapes"
	"github.com/pullwake/pullwake/server/streams"
	"github.com/pullwake/pullwake/server/writeauth"
)

type serveConfig struct {
	db              dbFlags
	addr            string
	publicURL       string
	adminToken      string
	adminTokenFile  string
	defaultLease    time.Duration
	sweepInterval   time.Duration
	wakeEventResend time.Duration
	longPollTimeout time.Duration
	retention       time.Duration
	migrate         bool
	logFormat       string
	logLevel        string
	http            httpLimits
	conns           connLimits
	// Stream guards (server/streams).
	streamWriteAuth string
	streamReadAuth  string
	maxLiveReaders  int
	// Group commit (internal/groupcommit) and profiling.
	groupCommit bool
	gcInFlight  int
	pprofAddr   string
	push        pushFlags // push delivery (cmd/pullwake/push.go)
	// requireTypes refuses spawns of unregistered entity types on /entities
	// too (Electric's prefix always does).
	requireTypes bool
}

// httpLimits are the HTTP server's deadlines and connection cap.
type httpLimits struct {
	readTimeout  time.Duration // whole request, body included
	writeTimeout time.Duration // 0 = derived from the long-poll timeout
	idleTimeout  time.Duration // keep-alive connection with no request
	maxConns     int
}

// connLimits are the connection settings around the cap (internal/connlimit).
type connLimits struct {
	perClient int    // per client (IPv4 address, IPv6 /64); 0 = derived from the cap
	overflow  int    // past the limits at once, answered once and closed
	probeAddr string // /healthz and /readyz on a listener of their own; "" = off
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseServe(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	logger, err := newLogger(stderr, c.logFormat, c.logLevel)
	if err != nil {
		return err
	}
	return serve(ctx, c, logger)
}

// parseServe builds serve's configuration from flags and the environment
// (getenv) and checks it; any malformed value is an error naming it.
func parseServe(args []string, getenv func(string) string, stderr io.Writer) (serveConfig, error) {
	fs := newFlagSet("serve", "serve [flags]\n\nRuns the HTTP server with its lease sweeper and claim listener.\nEvery flag also reads the environment variable named in its text.")
	fs.SetOutput(stderr)
	env := newEnvDefaults(getenv)
	var c serveConfig
	c.db.registerEnv(fs, getenv)
	fs.StringVar(&c.addr, "addr", cmp.Or(getenv("PULLWAKE_ADDR"), "127.0.0.1:8080"), "listen address host:port (env PULLWAKE_ADDR)")
	fs.StringVar(&c.publicURL, "public-url", getenv("PULLWAKE_PUBLIC_URL"), "base of absolute URLs handed out, e.g. callbacks (env PULLWAKE_PUBLIC_URL; default http://ADDR)")
	fs.StringVar(&c.adminToken, "admin-token", getenv("PULLWAKE_ADMIN_TOKEN"), "admin token for management routes, at least 128 bits (32 hex or 22 base64url characters); empty = dev mode, routes open (env PULLWAKE_ADMIN_TOKEN)")
	fs.StringVar(&c.adminTokenFile, "admin-token-file", getenv("PULLWAKE_ADMIN_TOKEN_FILE"), "read the admin token from this file instead (env PULLWAKE_ADMIN_TOKEN_FILE)")
	fs.DurationVar(&c.defaultLease, "default-lease-ttl", env.duration("default-lease-ttl", "PULLWAKE_DEFAULT_LEASE_TTL", 30*time.Second), "claim lease when a claim names none (env PULLWAKE_DEFAULT_LEASE_TTL)")
	fs.DurationVar(&c.sweepInterval, "sweep-interval", env.duration("sweep-interval", "PULLWAKE_SWEEP_INTERVAL", 5*time.Second), "lease expiry sweep period (env PULLWAKE_SWEEP_INTERVAL)")
	fs.DurationVar(&c.wakeEventResend, "wake-event-resend", env.duration("wake-event-resend", "PULLWAKE_WAKE_EVENT_RESEND", 5*time.Second), "a claimable wake whose last wake event its runner read without claiming gets a new event after this long, checked every sweep (env PULLWAKE_WAKE_EVENT_RESEND)")
	fs.DurationVar(&c.longPollTimeout, "long-poll-timeout", env.duration("long-poll-timeout", "PULLWAKE_LONG_POLL_TIMEOUT", 30*time.Second), "how long a live stream read waits (env PULLWAKE_LONG_POLL_TIMEOUT)")
	fs.DurationVar(&c.retention, "retention", env.duration("retention", "PULLWAKE_RETENTION", 7*24*time.Hour), "delete ended claims and finished wakes older than this; 0 keeps all (env PULLWAKE_RETENTION)")
	fs.BoolVar(&c.migrate, "migrate", env.bool("migrate", "PULLWAKE_MIGRATE", true), "apply pending migrations at start (env PULLWAKE_MIGRATE)")
	fs.StringVar(&c.logFormat, "log-format", getenv("PULLWAKE_LOG_FORMAT"), "json or text; default json unless stderr is a terminal (env PULLWAKE_LOG_FORMAT)")
	fs.StringVar(&c.logLevel, "log-level", cmp.Or(getenv("PULLWAKE_LOG_LEVEL"), "info"), "debug, info, warn or error (env PULLWAKE_LOG_LEVEL)")
	fs.DurationVar(&c.http.readTimeout, "read-timeout", env.duration("read-timeout", "PULLWAKE_READ_TIMEOUT", 30*time.Second), "longest a client may take to send a whole request, body included (env PULLWAKE_READ_TIMEOUT)")
	fs.DurationVar(&c.http.writeTimeout, "write-timeout", env.duration("write-timeout", "PULLWAKE_WRITE_TIMEOUT", 0), "longest a response may take to write; 0 = the longer of 90s and the long-poll timeout + 30s, so live reads fit (env PULLWAKE_WRITE_TIMEOUT)")
	fs.DurationVar(&c.http.idleTimeout, "idle-timeout", env.duration("idle-timeout", "PULLWAKE_IDLE_TIMEOUT", 60*time.Second), "keep-alive connections idle this long are closed (env PULLWAKE_IDLE_TIMEOUT)")
	fs.IntVar(&c.http.maxConns, "max-connections", env.int("max-connections", "PULLWAKE_MAX_CONNECTIONS", 1024), "client connections served at once (idle keep-alives and live readers count); at the cap the oldest idle one is closed for a new one, else the new one is answered past the cap (env PULLWAKE_MAX_CONNECTIONS)")
	fs.IntVar(&c.conns.perClient, "max-connections-per-client", env.int("max-connections-per-client", "PULLWAKE_MAX_CONNECTIONS_PER_CLIENT", 0), "of them, the most one client (IPv4 address or IPv6 /64, loopback too) may hold; at its limit its oldest idle one is closed for a new one, else the new one gets 429; 0 = a quarter of --max-connections; set it to --max-connections to turn it off (env PULLWAKE_MAX_CONNECTIONS_PER_CLIENT)")
	fs.IntVar(&c.conns.overflow, "overflow-connections", env.int("overflow-connections", "PULLWAKE_OVERFLOW_CONNECTIONS", 64), "connections past those limits taken at once to be answered once and closed: /healthz and /readyz as usual, any other request 503 (429 past the client limit) with Retry-After; more are closed unanswered (env PULLWAKE_OVERFLOW_CONNECTIONS)")
	fs.StringVar(&c.conns.probeAddr, "probe-addr", getenv("PULLWAKE_PROBE_ADDR"), "also serve /healthz and /readyz on this host:port, a listener of its own that API clients cannot fill; empty = off (env PULLWAKE_PROBE_ADDR)")
	fs.StringVar(&c.streamWriteAuth, "stream-write-auth", cmp.Or(getenv("PULLWAKE_STREAM_WRITE_AUTH"), streams.WriteAuthAdmin), "who appends to and closes plain streams when an admin token is set: admin or none (env PULLWAKE_STREAM_WRITE_AUTH)")
	fs.StringVar(&c.streamReadAuth, "stream-read-auth", cmp.Or(getenv("PULLWAKE_STREAM_READ_AUTH"), streams.ReadAuthNone), "who reads streams when an admin token is set: none, entity (entity streams need the admin or write token) or admin (env PULLWAKE_STREAM_READ_AUTH)")
	fs.IntVar(&c.maxLiveReaders, "max-live-readers", env.int("max-live-readers", "PULLWAKE_MAX_LIVE_READERS", 1000), "most concurrent long-poll and SSE stream readers, and as many live shape readers; more get 503 (env PULLWAKE_MAX_LIVE_READERS)")
	fs.BoolVar(&c.groupCommit, "group-commit", env.bool("group-commit", "PULLWAKE_GROUP_COMMIT", true), "run concurrent claims, dones and plain appends as shared transactions; --group-commit=false runs each request alone (env PULLWAKE_GROUP_COMMIT)")
	fs.IntVar(&c.gcInFlight, "group-commit-in-flight", env.int("group-commit-in-flight", "PULLWAKE_GROUP_COMMIT_IN_FLIGHT", 1), "group commit: batches of one kind that may run at once, 1 to 32 (env PULLWAKE_GROUP_COMMIT_IN_FLIGHT)")
	fs.StringVar(&c.pprofAddr, "pprof-addr", getenv("PULLWAKE_PPROF_ADDR"), "serve net/http/pprof on this host:port, a listener of its own; empty = off (env PULLWAKE_PPROF_ADDR)")
	c.push.register(fs, getenv, env)
	fs.BoolVar(&c.requireTypes, "require-entity-types", env.bool("require-entity-types", "PULLWAKE_REQUIRE_ENTITY_TYPES", false), "refuse spawns of unregistered entity types on /entities too; /_electric/entities always does (env PULLWAKE_REQUIRE_ENTITY_TYPES)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return c, err
	}
	if err := env.check(fs); err != nil {
		return c, err
	}
	if len(pos) > 0 {
		return c, fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
	}
	if err := c.db.check(); err != nil {
		return c, err
	}
	if _, _, err := net.SplitHostPort(c.addr); err != nil {
		return c, fmt.Errorf("%w: --addr %q must be host:port", errUsage, c.addr)
	}
	if c.defaultLease < time.Second || c.defaultLease > 10*time.Minute {
		return c, fmt.Errorf("%w: --default-lease-ttl %s must be between 1s and 10m", errUsage, c.defaultLease)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
		zero bool // 0 allowed
	}{
		{"sweep-interval", c.sweepInterval, false}, {"long-poll-timeout", c.longPollTimeout, false},
		{"wake-event-resend", c.wakeEventResend, false},
		{"retention", c.retention, true}, {"read-timeout", c.http.readTimeout, false},
		{"write-timeout", c.http.writeTimeout, true}, {"idle-timeout", c.http.idleTimeout, false},
	} {
		if d.v < 0 || (d.v == 0 && !d.zero) {
			return c, fmt.Errorf("%w: --%s %s must be positive", errUsage, d.name, d.v)
		}
	}
	if c.http.writeTimeout == 0 {
		c.http.writeTimeout = max(90*time.Second, c.longPollTimeout+30*time.Second)
	} else if c.http.writeTimeout < c.longPollTimeout+5*time.Second {
		return c, fmt.Errorf("%w: --write-timeout %s would cut live reads: it must exceed --long-poll-timeout (%s) by 5s at least", errUsage, c.http.writeTimeout, c.longPollTimeout)
	}
	if err := streams.CheckAuthModes(c.streamWriteAuth, c.streamReadAuth); err != nil {
		return c, fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := c.push.check(); err != nil {
		return c, err
	}
	if c.maxLiveReaders < 1 {
		return c, fmt.Errorf("%w: --max-live-readers (PULLWAKE_MAX_LIVE_READERS) %d must be at least 1", errUsage, c.maxLiveReaders)
	}
	if c.gcInFlight < 1 || c.gcInFlight > 32 {
		return c, fmt.Errorf("%w: --group-commit-in-flight %d must be between 1 and 32", errUsage, c.gcInFlight)
	}
	if c.pprofAddr != "" {
		if _, _, err := net.SplitHostPort(c.pprofAddr); err != nil {
			return c, fmt.Errorf("%w: --pprof-addr %q must be host:port", errUsage, c.pprofAddr)
		}
	}
	if c.http.maxConns < 1 {
		return c, fmt.Errorf("%w: --max-connections %d must be at least 1", errUsage, c.http.maxConns)
	}
	if err := c.conns.check(c.http.maxConns, c.addr, c.pprofAddr); err != nil {
		return c, err
	}
	if c.adminTokenFile != "" {
		if c.adminToken != "" {
			return c, fmt.Errorf("%w: give the admin token once: --admin-token (PULLWAKE_ADMIN_TOKEN) or --admin-token-file (PULLWAKE_ADMIN_TOKEN_FILE), not both", errUsage)
		}
		if c.adminToken, err = readTokenFile(c.adminTokenFile); err != nil {
			return c, fmt.Errorf("%w: %v", errUsage, err)
		}
	}
	if c.adminToken != "" {
		if err := checkAdminToken(c.adminToken); err != nil {
			return c, fmt.Errorf("%w: %v", errUsage, err)
		}
	}
	return c, nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, level)
	}
	if format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w: --log-format %q: want json or text", errUsage, format)
}

func openServePool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("%w: database url: %v", errUsage, err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		pc.MaxConns = 32
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	return pool, nil
}

func serve(ctx context.Context, c serveConfig, log *slog.Logger) error {
	pool, err := openServePool(ctx, c.db.url)
	if err != nil {
		return err
	}
	defer pool.Close()
	if c.migrate {
		if err := migrateUp(ctx, pool, log); err != nil {
			return err
		}
	}
	if c.adminToken == "" {
		log.Warn("no admin token configured (PULLWAKE_ADMIN_TOKEN): management routes are open; dev mode only")
	}
	publicURL := cmp.Or(c.publicURL, "http://"+c.addr)

	store, err := writeauth.NewStore(ctx, pool, c.db.tenant)
	if err != nil {
		log.Warn("no shared write-token key", "err", err)
	}
	pub := pgnotify.New(pool, log)
	var sh *streams.Handler // set below, before anything is served or scraped
	var srv *server.Server  // likewise
	met := metrics.New(metrics.Config{
		TokenStoreSize: store.Len,
		LiveReaders:    func() int { return sh.LiveReaders() },
		WakeEventsHeld: func() time.Duration { return srv.WakeEventsHeld() },
		Source:         metrics.DBSource{Conn: pool, Tenant: c.db.tenant},
		Logger:         log,
	})
	scfg := streams.Config{
		Pool: pool, Tenant: c.db.tenant, Gate: writeauth.New(store, pool, c.db.tenant), AdminToken: c.adminToken,
		LongPollTimeout: c.longPollTimeout, Logger: log, Metrics: met, Publisher: pub,
		WriteAuth: c.streamWriteAuth, ReadAuth: c.streamReadAuth, MaxLiveReaders: c.maxLiveReaders,
	}
	var bw *streams.BatchWriter
	if c.groupCommit {
		bw = streams.NewBatchWriter(pool, c.db.tenant, c.gcInFlight, func(n int) { met.BatchSize("append", n) })
		scfg.Writer = bw
	}
	sh = streams.New(scfg)
	// Shape sync (docs/shapes.md): nothing runs until the first shape
	// request; then a temporary logical replication slot feeds it.
	feed := shapes.NewFeed(shapes.FeedConfig{Pool: pool, ConnString: c.db.url, Tenant: c.db.tenant, Logger: log})
	defer feed.Close()
	srv, err = server.New(server.Config{
		Pool: pool, ConnString: c.db.url, Tenant: c.db.tenant, PublicURL: publicURL,
		AdminToken: c.adminToken, DefaultLeaseTTL: c.defaultLease, SweepInterval: c.sweepInterval,
		WakeEventResend: c.wakeEventResend,
		Retention:       c.retention,
		Tokens:          store, Streams: sh, StreamChannel: streams.NotifyChannel, Metrics: met, Publisher: pub,
		Logger: log, GroupCommit: c.groupCommit, GroupCommitInFlight: c.gcInFlight, BatchObserver: met.BatchSize,
		WebhookSigner:      c.push.signerFor(log),
		RequireEntityTypes: c.requireTypes,
		Shapes:             shapes.New(shapes.Config{Feed: feed, Logger: log, Private: c.adminToken != "", MaxLive: c.maxLiveReaders}),
	})
	if err != nil {
		return err
	}
	pushWorker := c.push.worker(pool, c.db.tenant, srv, log, met.PushDelivery)

	ln, err := net.Listen("tcp", c.addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("listen on %s: the address is already in use (another pullwake, or another program, holds the port): stop it or choose another address with --addr or PULLWAKE_ADDR", c.addr)
	}
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.addr, err)
	}
	var probeLn net.Listener
	if c.conns.probeAddr != "" {
		if probeLn, err = net.Listen("tcp", c.conns.probeAddr); err != nil {
			_ = ln.Close()
			return fmt.Errorf("listen on the probe address %s (--probe-addr or PULLWAKE_PROBE_ADDR): %w", c.conns.probeAddr, err)
		}
	}
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	pub.Start(bg)
	srv.Start(bg)
	if bw != nil {
		bw.Start(bg)
		defer bw.Stop() // after the HTTP server's requests have finished
	}
	if c.pprofAddr != "" {
		stopPprof, err := servePprof(c.pprofAddr, log)
		if err != nil {
			srv.Stop()
			pub.Stop()
			return err
		}
		defer stopPprof()
	}
	pushWorker.Start(bg)
	if fds := openFileLimit(); fds > 0 && uint64(c.http.maxConns+c.conns.overflow)+128 > fds {
		log.Warn("max-connections plus overflow-connections is close to the open-file limit: raise the limit (ulimit -n) or lower them",
			"max_connections", c.http.maxConns, "overflow_connections", c.conns.overflow, "open_file_limit", fds)
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	h := srv.Handler()
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(10*time.Second, c.http.readTimeout),
		ReadTimeout:       c.http.readTimeout,
		WriteTimeout:      c.http.writeTimeout,
		IdleTimeout:       c.http.idleTimeout,
		ErrorLog:          errLog,
	}
	cl := connlimit.New(ln, connlimit.Config{
		Max: c.http.maxConns, PerClient: c.conns.perClient, Overflow: c.conns.overflow, Probe: isProbe,
	})
	hs.ConnState = cl.ConnState
	overflow := cl.OverflowServer(h, errLog)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(cl) }()
	go func() { _ = overflow.Serve(cl.Overflow()) }()
	var probes *http.Server
	if probeLn != nil {
		probes = probeServer(h, errLog)
		pl := connlimit.New(probeLn, connlimit.Config{Max: probeMaxConns})
		probes.ConnState = pl.ConnState
		go func() { _ = probes.Serve(pl) }()
	}
	go logConnRefusals(bg, cl, log)
	log.Info("pullwake serving", "addr", ln.Addr().String(), "public_url", publicURL, "tenant", c.db.tenant,
		"default_lease_ttl", c.defaultLease.String(), "sweep_interval", c.sweepInterval.String(),
		"read_timeout", c.http.readTimeout.String(), "write_timeout", c.http.writeTimeout.String(),
		"idle_timeout", c.http.idleTimeout.String(), "max_connections", c.http.maxConns,
		"max_connections_per_client", c.conns.perClient, "overflow_connections", c.conns.overflow,
		"probe_addr", c.conns.probeAddr, "group_commit", c.groupCommit)

	stopHTTP := func() {
		_ = overflow.Close()
		if probes != nil {
			_ = probes.Close()
		}
	}
	select {
	case err := <-errc:
		stopHTTP()
		pushWorker.Stop()
		srv.Stop()
		pub.Stop()
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests")
	sh.Close()   // live readers answer now instead of at their timeout
	feed.Close() // live shape readers too; the slot goes with its connection
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("http shutdown", "err", err)
	}
	stopHTTP() // probes answer until the API has stopped
	pushWorker.Stop()
	srv.Stop()
	pub.Stop() // sends what the last requests queued
	log.Info("stopped")
	return nil
}

func migrateUp(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	m, err := migrate.New(pool)
	if err != nil {
		return err
	}
	defer m.Close()
	vs, err := m.Up(ctx)
	if err != nil {
		return err
	}
	if len(vs) > 0 {
		log.Info("migrations applied", "versions", fmt.Sprint(vs))
	}
	return nil
}

// check validates the connection settings and fills the derived default
// of the per-client limit (a quarter of maxConns).
func (h *connLimits) check(maxConns int, addr, pprofAddr string) error {
	if h.perClient < 0 || h.perClient > maxConns {
		return fmt.Errorf("%w: --max-connections-per-client (PULLWAKE_MAX_CONNECTIONS_PER_CLIENT) %d must be between 0 (a quarter of --max-connections) and --max-connections (%d)",
			errUsage, h.perClient, maxConns)
	}
	if h.perClient == 0 {
		h.perClient = max(1, maxConns/4)
	}
	if h.overflow < 1 {
		return fmt.Errorf("%w: --overflow-connections (PULLWAKE_OVERFLOW_CONNECTIONS) %d must be at least 1: /healthz and /readyz are answered on them when the connections run out",
			errUsage, h.overflow)
	}
	if h.probeAddr != "" {
		if _, _, err := net.SplitHostPort(h.probeAddr); err != nil {
			return fmt.Errorf("%w: --probe-addr (PULLWAKE_PROBE_ADDR) %q must be host:port", errUsage, h.probeAddr)
		}
		if h.probeAddr == addr || h.probeAddr == pprofAddr {
			return fmt.Errorf("%w: --probe-addr (PULLWAKE_PROBE_ADDR) %q must differ from --addr and --pprof-addr", errUsage, h.probeAddr)
		}
	}
	return nil
}

// isProbe: a health check, answered even past the connection limits.
func isProbe(r *http.Request) bool { return r.URL.Path == "/healthz" || r.URL.Path == "/readyz" }

// probeMaxConns caps the probe listener's connections (--probe-addr);
// past it, the oldest idle one is closed for a new one, else the new one
// is refused (503).
const probeMaxConns = 64

// probeServer serves /healthz and /readyz of h, and 404 for anything else,
// on the probe listener.
func probeServer(h http.Handler, errLog *log.Logger) *http.Server {
	return &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !isProbe(r) {
				http.Error(w, "only /healthz and /readyz are served here", http.StatusNotFound)
				return
			}
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          errLog,
	}
}

// logConnRefusals logs, every 10s at most, the connections refused or
// closed to make room since the last line, until ctx ends.
func logConnRefusals(ctx context.Context, cl *connlimit.Listener, log *slog.Logger) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	var last connlimit.Stats
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := cl.Stats()
		over := st.OverCap - last.OverCap + st.OverClient - last.OverClient
		evicted := st.Evicted - last.Evicted
		attrs := []any{"over_cap", st.OverCap - last.OverCap, "over_client_limit", st.OverClient - last.OverClient,
			"dropped", st.Dropped - last.Dropped, "idle_closed", evicted, "open", st.Open, "idle", st.Idle, "interval", "10s"}
		switch {
		case over > 0:
			log.Warn("connections past the limits: answered 503 (over_cap) or 429 (over_client_limit) unless probes; dropped = closed unanswered, past --overflow-connections too", attrs...)
		case evicted > 0:
			log.Info("idle connections closed to make room for new ones", attrs...)
		}
		last = st
	}
}

// openFileLimit is the process's soft limit on open files (0 if unknown).
func openFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}

// servePprof serves net/http/pprof on a listener of its own (never on the
// API's): profiles expose internals, so an operator opts in and binds it
// where only they reach it.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pprof: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	log.Info("pprof serving", "addr", ln.Addr().String())
	return func() { _ = hs.Close() }, nil
}
