package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/metrics"
	"github.com/pullwake/pullwake/internal/migrate"
	"github.com/pullwake/pullwake/internal/pgnotify"
	"github.com/pullwake/pullwake/server"
	"github.com/pullwake/pullwake/server/streams"
	"github.com/pullwake/pullwake/server/tokens"
)

type serveConfig struct {
	db              dbFlags
	addr            string
	publicURL       string
	adminToken      string
	defaultLease    time.Duration
	sweepInterval   time.Duration
	longPollTimeout time.Duration
	retention       time.Duration
	migrate         bool
	logFormat       string
	logLevel        string
	// Stream guards (server/streams).
	streamWriteAuth string
	streamReadAuth  string
	maxLiveReaders  int
}

func envBool(name string, def bool) bool {
	v, err := strconv.ParseBool(os.Getenv(name))
	if err != nil {
		return def
	}
	return v
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", "serve [flags]\n\nRuns the HTTP server with its lease sweeper and claim listener.\nEvery flag also reads the environment variable named in its text.")
	fs.SetOutput(stderr)
	var c serveConfig
	c.db.register(fs)
	fs.StringVar(&c.addr, "addr", cmp.Or(os.Getenv("PULLWAKE_ADDR"), "127.0.0.1:8080"), "listen address host:port (env PULLWAKE_ADDR)")
	fs.StringVar(&c.publicURL, "public-url", os.Getenv("PULLWAKE_PUBLIC_URL"), "base of absolute URLs handed out, e.g. callbacks (env PULLWAKE_PUBLIC_URL; default http://ADDR)")
	fs.StringVar(&c.adminToken, "admin-token", os.Getenv("PULLWAKE_ADMIN_TOKEN"), "admin token for management routes; empty = dev mode, routes open (env PULLWAKE_ADMIN_TOKEN)")
	fs.DurationVar(&c.defaultLease, "default-lease-ttl", envDuration("PULLWAKE_DEFAULT_LEASE_TTL", 30*time.Second), "claim lease when a claim names none (env PULLWAKE_DEFAULT_LEASE_TTL)")
	fs.DurationVar(&c.sweepInterval, "sweep-interval", envDuration("PULLWAKE_SWEEP_INTERVAL", 5*time.Second), "lease expiry sweep period (env PULLWAKE_SWEEP_INTERVAL)")
	fs.DurationVar(&c.longPollTimeout, "long-poll-timeout", envDuration("PULLWAKE_LONG_POLL_TIMEOUT", 30*time.Second), "how long a live stream read waits (env PULLWAKE_LONG_POLL_TIMEOUT)")
	fs.DurationVar(&c.retention, "retention", envDuration("PULLWAKE_RETENTION", 7*24*time.Hour), "delete ended claims and finished wakes older than this; 0 keeps all (env PULLWAKE_RETENTION)")
	fs.BoolVar(&c.migrate, "migrate", envBool("PULLWAKE_MIGRATE", true), "apply pending migrations at start (env PULLWAKE_MIGRATE)")
	fs.StringVar(&c.logFormat, "log-format", os.Getenv("PULLWAKE_LOG_FORMAT"), "json or text; default json unless stderr is a terminal (env PULLWAKE_LOG_FORMAT)")
	fs.StringVar(&c.logLevel, "log-level", cmp.Or(os.Getenv("PULLWAKE_LOG_LEVEL"), "info"), "debug, info, warn or error (env PULLWAKE_LOG_LEVEL)")
	fs.StringVar(&c.streamWriteAuth, "stream-write-auth", cmp.Or(os.Getenv("PULLWAKE_STREAM_WRITE_AUTH"), streams.WriteAuthAdmin), "who appends to and closes plain streams when an admin token is set: admin or none (env PULLWAKE_STREAM_WRITE_AUTH)")
	fs.StringVar(&c.streamReadAuth, "stream-read-auth", cmp.Or(os.Getenv("PULLWAKE_STREAM_READ_AUTH"), streams.ReadAuthNone), "who reads streams when an admin token is set: none, entity (entity streams need the admin or write token) or admin (env PULLWAKE_STREAM_READ_AUTH)")
	maxLive := fs.String("max-live-readers", cmp.Or(os.Getenv("PULLWAKE_MAX_LIVE_READERS"), "1000"), "most concurrent long-poll and SSE stream readers; more get 503 (env PULLWAKE_MAX_LIVE_READERS)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := streams.CheckAuthModes(c.streamWriteAuth, c.streamReadAuth); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if c.maxLiveReaders, err = strconv.Atoi(*maxLive); err != nil || c.maxLiveReaders < 1 {
		return fmt.Errorf("%w: --max-live-readers (PULLWAKE_MAX_LIVE_READERS) %q must be an integer of at least 1", errUsage, *maxLive)
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
	}
	if err := c.db.check(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.addr); err != nil {
		return fmt.Errorf("%w: --addr %q must be host:port", errUsage, c.addr)
	}
	if c.defaultLease < time.Second || c.defaultLease > 10*time.Minute {
		return fmt.Errorf("%w: --default-lease-ttl %s must be between 1s and 10m", errUsage, c.defaultLease)
	}
	if c.sweepInterval <= 0 || c.longPollTimeout <= 0 || c.retention < 0 {
		return fmt.Errorf("%w: durations must be positive", errUsage)
	}
	logger, err := newLogger(stderr, c.logFormat, c.logLevel)
	if err != nil {
		return err
	}
	return serve(ctx, c, logger)
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

	store := tokens.New()
	pub := pgnotify.New(pool, log)
	met := metrics.New(metrics.Config{
		TokenStoreSize: store.Len,
		Source:         metrics.DBSource{Conn: pool, Tenant: c.db.tenant},
		Logger:         log,
	})
	sh := streams.New(streams.Config{
		Pool: pool, Tenant: c.db.tenant, Gate: store, AdminToken: c.adminToken,
		LongPollTimeout: c.longPollTimeout, Logger: log, Metrics: met, Publisher: pub,
		WriteAuth: c.streamWriteAuth, ReadAuth: c.streamReadAuth, MaxLiveReaders: c.maxLiveReaders,
	})
	srv, err := server.New(server.Config{
		Pool: pool, ConnString: c.db.url, Tenant: c.db.tenant, PublicURL: publicURL,
		AdminToken: c.adminToken, DefaultLeaseTTL: c.defaultLease, SweepInterval: c.sweepInterval,
		Retention: c.retention,
		Tokens:    store, Streams: sh, StreamChannel: streams.NotifyChannel, Metrics: met, Publisher: pub,
		Logger: log,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.addr, err)
	}
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	pub.Start(bg)
	srv.Start(bg)
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Info("pullwake serving", "addr", ln.Addr().String(), "public_url", publicURL, "tenant", c.db.tenant,
		"default_lease_ttl", c.defaultLease.String(), "sweep_interval", c.sweepInterval.String())

	select {
	case err := <-errc:
		srv.Stop()
		pub.Stop()
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests")
	sh.Close() // live readers answer now instead of at their timeout
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("http shutdown", "err", err)
	}
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
