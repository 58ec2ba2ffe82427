package push

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/webhooksig"
)

// Host is what the worker needs from the HTTP server's memory: the server
// mints write tokens and runs the memory step after a release.
type Host interface {
	// PushNotification mints the claim's write token and returns the wake
	// notification to POST.
	PushNotification(c db.ClaimWakeForPushRow, took time.Duration) any
	// PushRelease releases the claim (release_claim) and drops its token.
	PushRelease(ctx context.Context, consumer string, epoch int64, acks []byte) error
}

// Config configures the worker; zero values get defaults.
type Config struct {
	Pool   *pgxpool.Pool
	Tenant string // "default"
	Host   Host
	Signer *webhooksig.Signer
	// PollInterval (250ms) is how often an idle worker looks for pushable
	// wakes; a pass that found a full batch starts the next one at once.
	PollInterval time.Duration
	// Timeout (10s) bounds one POST, answer included.
	Timeout time.Duration
	// ConnectTimeout (3s) bounds getting a connection for a POST: the TCP
	// connect and the TLS handshake together, counted from the POST's
	// start. An endpoint that does not accept connections fails this fast
	// and frees its slot, instead of holding it for Timeout.
	ConnectTimeout time.Duration
	// BackoffBase (1s) and BackoffMax (60s): after n consecutive failed
	// deliveries a target waits min(max, base*2^(n-1)) +-20% before the next.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// Concurrency (256) is the most deliveries in flight at once, all
	// targets together.
	Concurrency int
	// PerTarget (2) is the most deliveries in flight at once for one
	// target (a subscription or an entity type's webhook): a target whose
	// endpoint hangs holds at most PerTarget slots, and the other targets'
	// wakes are delivered meanwhile.
	PerTarget int
	// Client sends the POSTs; nil = a client that follows no redirects and
	// whose dialer and TLS handshake also give up after ConnectTimeout.
	Client *http.Client
	Logger *slog.Logger
	// OnDelivery, when set, is told each delivery's outcome (Delivered or
	// Failed) and lag: from the wake's queueing (its created_at, the
	// database's clock) to the delivery's answer (this process's clock).
	// A wake that was not claimed (another server took it) is no delivery.
	// It must not block. nil = no metrics (internal/metrics' PushDelivery
	// fits).
	OnDelivery func(outcome string, lag time.Duration)
}

// Delivery outcomes, as OnDelivery is told them.
const (
	// Delivered: the endpoint answered 2xx.
	Delivered = "delivered"
	// Failed: no connection, a timeout or an answer other than 2xx; the
	// claim was released and the target backs off.
	Failed = "failed"
)

// Worker delivers pushable wakes until stopped.
type Worker struct {
	cfg      Config
	q        *db.Queries
	slots    *slots
	freed    chan struct{} // a delivery ended: a slot is free
	inflight sync.WaitGroup
	cancel   context.CancelFunc
	done     chan struct{}
}

const (
	// maxAnswer bounds how much of an endpoint's answer is read.
	maxAnswer = 64 << 10
	// maxScan bounds how many pushable wakes one pass reads while looking
	// for wakes of targets with a free slot.
	maxScan = 1024
)

// errConnectTimeout ends a POST that got no connection in ConnectTimeout.
var errConnectTimeout = errors.New("connect timeout")

// New returns a worker; Start runs it.
func New(cfg Config) *Worker {
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	cfg.PollInterval = cmp.Or(cfg.PollInterval, 250*time.Millisecond)
	cfg.Timeout = cmp.Or(cfg.Timeout, 10*time.Second)
	cfg.BackoffBase = cmp.Or(cfg.BackoffBase, time.Second)
	cfg.BackoffMax = cmp.Or(cfg.BackoffMax, time.Minute)
	cfg.ConnectTimeout = cmp.Or(cfg.ConnectTimeout, 3*time.Second)
	cfg.Concurrency = cmp.Or(cfg.Concurrency, 256)
	cfg.PerTarget = cmp.Or(cfg.PerTarget, 2)
	if cfg.Client == nil {
		cfg.Client = defaultClient(cfg.ConnectTimeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Worker{cfg: cfg, q: db.New(), slots: newSlots(cfg.Concurrency, cfg.PerTarget),
		freed: make(chan struct{}, 1)}
}

// defaultClient follows no redirects. Its dials and TLS handshakes give up
// after connect as well: the transport finishes a dial in the background
// when the POST that asked for it has ended, and it must not keep a socket
// to a dead endpoint for longer.
func defaultClient(connect time.Duration) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = connect
	return &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

// Start runs the delivery loop until Stop or ctx ends. A pass starts as
// many deliveries as there are free slots and does not wait for them: an
// endpoint that hangs until the timeout holds its target's slots, not the
// loop nor the other targets' slots. A delivery that ends starts the next
// pass at once, so a target's next wake does not wait for the poll.
func (w *Worker) Start(ctx context.Context) {
	ctx, w.cancel = context.WithCancel(ctx)
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		for {
			n, free, err := w.pass(ctx)
			if err != nil && ctx.Err() == nil {
				w.cfg.Logger.Warn("push pass failed", "err", err)
			}
			if err == nil && n > 0 && n == free {
				continue // every free slot found work: there may be more
			}
			select {
			case <-ctx.Done():
				return
			case <-w.freed:
			case <-time.After(w.cfg.PollInterval):
			}
		}
	}()
}

// Stop ends the loop, cancels the deliveries in flight (each ends as a
// failed delivery: its claim is released) and waits for them.
func (w *Worker) Stop() {
	if w.cancel == nil {
		return
	}
	w.cancel()
	<-w.done
	w.inflight.Wait()
	w.cfg.Client.CloseIdleConnections()
}

// pass lists the oldest pushable wakes, one per free slot, and starts the
// deliveries of those whose target has a slot of its own left; it returns
// how many it started and how many slots were free. When wakes of targets
// at their share took places in the list, it reads it again, maxScan long.
func (w *Worker) pass(ctx context.Context) (started, free int, err error) {
	free = w.slots.free()
	if free == 0 {
		return 0, 0, nil
	}
	for limit := free; ; limit = maxScan {
		rows, err := w.q.PushPending(ctx, w.cfg.Pool, db.PushPendingParams{
			MaxWakes: int32(limit), TenantID: w.cfg.Tenant})
		if err != nil {
			return started, free, fmt.Errorf("list pushable wakes: %w", err)
		}
		for _, r := range rows {
			if started == free {
				break
			}
			if !w.slots.take(r.TargetID, r.WakeID) {
				continue // the target's share is in flight, or this wake is
			}
			started++
			w.inflight.Add(1)
			go func() {
				defer func() {
					w.slots.give(r.TargetID, r.WakeID)
					select {
					case w.freed <- struct{}{}:
					default:
					}
					w.inflight.Done()
				}()
				w.deliver(ctx, r)
			}()
		}
		if started == free || len(rows) < limit || limit >= maxScan {
			return started, free, nil
		}
	}
}

// runOnce is one pass that waits for its deliveries (tests drive the
// worker with it).
func (w *Worker) runOnce(ctx context.Context) (int, error) {
	n, _, err := w.pass(ctx)
	w.inflight.Wait()
	return n, err
}

// deliver claims one pending wake for its target and POSTs its
// notification.
func (w *Worker) deliver(ctx context.Context, p db.PushPendingRow) {
	target, wakeID := p.TargetID, p.WakeID
	log := w.cfg.Logger.With("subscription_id", target, "wake_id", wakeID)
	start := time.Now()
	c, err := w.q.ClaimWakeForPush(ctx, w.cfg.Pool, db.ClaimWakeForPushParams{
		TargetID: target, WakeID: wakeID, TenantID: w.cfg.Tenant})
	if errors.Is(err, db.ErrNotFound) {
		return // taken by another server, or no longer this target's
	}
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("push claim failed", "err", err)
		}
		return
	}
	log = log.With("consumer_id", c.ConsumerID, "epoch", c.Epoch, "entity_url", c.EntityUrl)
	body, err := json.Marshal(w.cfg.Host.PushNotification(c, time.Since(start)))
	if err == nil {
		var done bool
		done, err = w.post(ctx, c.WebhookUrl, body)
		if err == nil {
			w.observe(Delivered, p.QueuedAt)
			w.succeeded(ctx, log, target, c, done)
			return
		}
	}
	w.observe(Failed, p.QueuedAt)
	w.failed(ctx, log, target, c, err)
}

// observe tells OnDelivery of a delivery's outcome, as soon as it has its
// answer (before the writes that follow it).
func (w *Worker) observe(outcome string, queuedAt time.Time) {
	if w.cfg.OnDelivery != nil {
		w.cfg.OnDelivery(outcome, time.Since(queuedAt))
	}
}

// post sends body to url, signed, and reports whether the endpoint
// answered {"done": true}. Anything but a 2xx answer is an error. The POST
// gets ConnectTimeout to have a connection (dial and TLS handshake) and
// Timeout in all.
func (w *Worker) post(ctx context.Context, url string, body []byte) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	ctx, cancelConnect := context.WithCancelCause(ctx)
	defer cancelConnect(nil)
	connecting := time.AfterFunc(w.cfg.ConnectTimeout, func() { cancelConnect(errConnectTimeout) })
	defer connecting.Stop()
	var connected atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { connected.Store(true); connecting.Stop() }})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "pullwake-push")
	req.Header.Set(webhooksig.Header, w.cfg.Signer.Sign(body, time.Now()))
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		// The connect timer, or the default client's dialer or TLS
		// handshake timeout (the same duration), ended it.
		var ne net.Error
		if !connected.Load() && (errors.Is(context.Cause(ctx), errConnectTimeout) ||
			ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout()) {
			return false, fmt.Errorf("post: no connection within %s: %w", w.cfg.ConnectTimeout, err)
		}
		return false, fmt.Errorf("post: %w", err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return false, fmt.Errorf("endpoint answered %d", resp.StatusCode)
	}
	if err != nil {
		return false, fmt.Errorf("read answer: %w", err)
	}
	var a struct {
		Done bool `json:"done"`
	}
	_ = json.Unmarshal(answer, &a) // any 2xx is delivered; only {"done": true} means more
	return a.Done, nil
}

// cleanup is a context for the writes after a delivery, which must happen
// even when the worker is stopping.
func cleanup(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

func (w *Worker) succeeded(ctx context.Context, log *slog.Logger, target string, c db.ClaimWakeForPushRow, done bool) {
	cctx, cancel := cleanup(ctx)
	defer cancel()
	if err := w.q.PushDelivered(cctx, w.cfg.Pool, db.PushDeliveredParams{TenantID: w.cfg.Tenant, ID: target}); err != nil {
		log.Warn("push: recording delivery failed", "err", err)
	}
	log.Info("wake pushed", "done", done)
	if !done {
		return
	}
	acks, _ := json.Marshal([]map[string]string{{"stream": c.StreamPath, "offset": c.TailOffset}})
	if err := w.cfg.Host.PushRelease(cctx, c.ConsumerID, c.Epoch, acks); err != nil {
		// The claim stays active until its lease passes; the sweeper ends it.
		log.Warn("push: release after done failed; the lease will end the claim", "err", err)
	}
}

func (w *Worker) failed(ctx context.Context, log *slog.Logger, target string, c db.ClaimWakeForPushRow, cause error) {
	cctx, cancel := cleanup(ctx)
	defer cancel()
	if err := w.cfg.Host.PushRelease(cctx, c.ConsumerID, c.Epoch, []byte("[]")); err != nil {
		log.Warn("push: release after a failed delivery failed; the lease will end the claim", "err", err)
	}
	r, err := w.q.PushFailed(cctx, w.cfg.Pool, db.PushFailedParams{
		TenantID: w.cfg.Tenant, ID: target, LastError: cause.Error(),
		BaseMs: float64(w.cfg.BackoffBase.Milliseconds()), MaxMs: float64(w.cfg.BackoffMax.Milliseconds())})
	if err != nil {
		log.Warn("push: recording the failure failed", "err", err, "cause", cause)
		return
	}
	log.Warn("push delivery failed", "err", cause, "failures", r.Failures, "next_attempt_at", r.NextAttemptAt)
}
