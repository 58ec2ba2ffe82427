package main

import (
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/webhooksig"
	"github.com/pullwake/pullwake/server/push"
)

// pushFlags configure push delivery (webhook subscriptions, server/push).
type pushFlags struct {
	signingKey     string
	timeout        time.Duration
	connectTimeout time.Duration
	pollInterval   time.Duration
	concurrency    int
	perTarget      int
	signer         *webhooksig.Signer // from signingKey, set by check
}

func (p *pushFlags) register(fs *flag.FlagSet, getenv func(string) string, env *envDefaults) {
	fs.StringVar(&p.signingKey, "webhook-signing-key", getenv("PULLWAKE_WEBHOOK_SIGNING_KEY"), "Ed25519 seed (32 bytes, base64 or hex) that signs push deliveries; every instance needs the same; empty = a fresh key per process (env PULLWAKE_WEBHOOK_SIGNING_KEY)")
	fs.DurationVar(&p.timeout, "push-timeout", env.duration("push-timeout", "PULLWAKE_PUSH_TIMEOUT", 10*time.Second), "longest a push delivery (POST to a webhook) may take, answer included (env PULLWAKE_PUSH_TIMEOUT)")
	fs.DurationVar(&p.connectTimeout, "push-connect-timeout", env.duration("push-connect-timeout", "PULLWAKE_PUSH_CONNECT_TIMEOUT", 3*time.Second), "longest a push delivery may take to get a connection (TCP connect and TLS handshake), apart from --push-timeout (env PULLWAKE_PUSH_CONNECT_TIMEOUT)")
	fs.IntVar(&p.concurrency, "push-concurrency", env.int("push-concurrency", "PULLWAKE_PUSH_CONCURRENCY", 256), "most push deliveries in flight at once, all targets together (env PULLWAKE_PUSH_CONCURRENCY)")
	fs.IntVar(&p.perTarget, "push-per-target", env.int("push-per-target", "PULLWAKE_PUSH_PER_TARGET", 2), "most push deliveries in flight at once to one target, so a hanging endpoint delays only itself (env PULLWAKE_PUSH_PER_TARGET)")
	fs.DurationVar(&p.pollInterval, "push-poll-interval", env.duration("push-poll-interval", "PULLWAKE_PUSH_POLL_INTERVAL", 250*time.Millisecond), "how often the push worker looks for wakes to deliver (env PULLWAKE_PUSH_POLL_INTERVAL)")
}

func (p *pushFlags) check() error {
	if p.timeout <= 0 || p.timeout > 10*time.Minute {
		return fmt.Errorf("%w: --push-timeout %s must be between 1ns and 10m", errUsage, p.timeout)
	}
	if p.connectTimeout <= 0 || p.connectTimeout > p.timeout {
		return fmt.Errorf("%w: --push-connect-timeout %s must be positive and at most --push-timeout (%s)", errUsage, p.connectTimeout, p.timeout)
	}
	if p.concurrency < 1 || p.concurrency > 10000 {
		return fmt.Errorf("%w: --push-concurrency %d must be between 1 and 10000", errUsage, p.concurrency)
	}
	if p.perTarget < 1 || p.perTarget > p.concurrency {
		return fmt.Errorf("%w: --push-per-target %d must be between 1 and --push-concurrency (%d)", errUsage, p.perTarget, p.concurrency)
	}
	if p.pollInterval <= 0 {
		return fmt.Errorf("%w: --push-poll-interval %s must be positive", errUsage, p.pollInterval)
	}
	if p.signingKey != "" {
		s, err := webhooksig.Parse(p.signingKey)
		if err != nil {
			return fmt.Errorf("%w: --webhook-signing-key (PULLWAKE_WEBHOOK_SIGNING_KEY): %v", errUsage, err)
		}
		p.signer = s
	}
	return nil
}

// signerFor returns the configured signer, or a fresh one with a warning.
func (p *pushFlags) signerFor(log *slog.Logger) *webhooksig.Signer {
	if p.signer == nil {
		p.signer = webhooksig.Generate()
		log.Warn("no webhook signing key configured (PULLWAKE_WEBHOOK_SIGNING_KEY): push deliveries are signed with a key made for this process; receivers must re-read /__ds/jwks.json after a restart, and several instances need one shared key")
	}
	return p.signer
}

func (p *pushFlags) worker(pool *pgxpool.Pool, tenant string, host push.Host, log *slog.Logger,
	onDelivery func(outcome string, lag time.Duration)) *push.Worker {
	return push.New(push.Config{Pool: pool, Tenant: tenant, Host: host, Signer: p.signer,
		Timeout: p.timeout, ConnectTimeout: p.connectTimeout, Concurrency: p.concurrency, PerTarget: p.perTarget,
		PollInterval: p.pollInterval, Logger: log, OnDelivery: onDelivery})
}
