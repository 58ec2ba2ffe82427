package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Handler processes one claimed wake. It reads w.Inbox (or w.Events),
// writes with w.Append, and returns. Returning nil acks what was read;
// returning an error (or panicking) releases the claim without acks, so
// the same messages are offered again. ctx is cancelled when the claim is
// lost (context.Cause is ErrClaimLost) or when a stop's StopTimeout passes.
type Handler interface {
	HandleWake(ctx context.Context, w *Wake) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, w *Wake) error

// HandleWake calls f.
func (f HandlerFunc) HandleWake(ctx context.Context, w *Wake) error { return f(ctx, w) }

// ErrRunnerTokenRefused means the server refused the runner token: the
// runner was registered again elsewhere (which replaces its token) or was
// deleted. Run returns it.
var ErrRunnerTokenRefused = errors.New("runner: the server refused the runner token: another process registered this runner id since (each registration replaces the token), or the runner was deleted; give each process its own runner id")

// maxQueued bounds the wake events waiting for a free slot; past it the
// oldest are dropped and the runner claims until the server has no work,
// which covers them.
const maxQueued = 1024

// Runner claims wakes for one runner id and hands them to a Handler.
type Runner struct {
	cfg     Config
	c       *client
	log     *slog.Logger
	handler Handler

	token    string // runner token, set once Run registered
	started  atomic.Bool
	inFlight atomic.Int64
}

// New checks cfg and returns a Runner; nothing is sent until Run.
func New(cfg Config, h Handler) (*Runner, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if h == nil {
		return nil, errors.New("runner: a Handler is required")
	}
	return &Runner{
		cfg: cfg, c: &client{base: cfg.ServerURL, http: cfg.HTTPClient},
		log: cfg.Logger.With("runner_id", cfg.RunnerID), handler: h,
	}, nil
}

func (r *Runner) newBackoff() *backoff { return &backoff{min: r.cfg.MinBackoff, max: r.cfg.MaxBackoff} }

// Run registers the runner (unless Config.RunnerToken is set), then waits
// for wakes and runs the Handler for each claim, at most
// Config.Concurrency at a time, until ctx ends. Then it stops gracefully:
// it claims nothing more, lets running handlers finish for up to
// Config.StopTimeout, cancels the rest, sends every claim's done, and
// returns nil. It returns an error when the runner cannot register or the
// server refuses its token (ErrRunnerTokenRefused). Run may be called once.
func (r *Runner) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("runner: Run called twice")
	}
	if r.cfg.RunnerToken != "" {
		r.token = r.cfg.RunnerToken
	} else {
		tok, err := r.register(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		r.token = tok
	}

	// hard bounds the handlers: it ends StopTimeout after ctx does.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	bgCtx, stopBG := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bell := make(chan []json.RawMessage)
	fatal := make(chan error, 1)
	bg.Go(func() { r.liveness(bgCtx) })
	bg.Go(func() {
		if err := r.wakes(bgCtx, bell); err != nil && bgCtx.Err() == nil {
			fatal <- err
		}
	})

	var handlers sync.WaitGroup
	err := r.dispatch(ctx, hard, &handlers, bell, fatal)
	stopBG()
	bg.Wait()
	if r.inFlight.Load() > 0 {
		r.log.Info("stopping: waiting for running handlers", "in_flight", r.inFlight.Load(), "stop_timeout", r.cfg.StopTimeout.String())
	}
	t := time.AfterFunc(r.cfg.StopTimeout, func() {
		r.log.Warn("stop timeout passed: cancelling running handlers", "in_flight", r.inFlight.Load())
		cancelHard()
	})
	handlers.Wait()
	t.Stop()
	r.log.Info("runner stopped")
	return err
}

// register registers the runner, or restarts it when the id exists
// (200), and returns the new runner token.
func (r *Runner) register(ctx context.Context) (string, error) {
	body := map[string]string{"id": r.cfg.RunnerID}
	if r.cfg.Label != "" {
		body["label"] = r.cfg.Label
	}
	if r.cfg.Kind != "" {
		body["kind"] = r.cfg.Kind
	}
	bo := r.newBackoff()
	for {
		a, err := r.c.do(ctx, http.MethodPost, "/_electric/runners", r.cfg.AdminToken, body)
		if err == nil {
			switch a.status {
			case http.StatusOK, http.StatusCreated:
				var ans struct {
					RunnerToken string `json:"runner_token"`
				}
				if err := json.Unmarshal(a.body, &ans); err != nil || ans.RunnerToken == "" {
					return "", fmt.Errorf("register runner %s: answer without runner_token", r.cfg.RunnerID)
				}
				r.log.Info("runner registered", "restart", a.status == http.StatusOK)
				return ans.RunnerToken, nil
			case http.StatusConflict:
				return "", fmt.Errorf("register runner %s: the server does not accept registering an existing id again; "+
					"pass the token of the first registration as RunnerToken: %w", r.cfg.RunnerID, a.apiError("register"))
			}
			err = a.apiError("register runner " + r.cfg.RunnerID)
		}
		if transient(err) && sleep(ctx, bo.next()) {
			r.log.Warn("registration failed; retrying", "err", err)
			continue
		}
		return "", err
	}
}

// dispatch is the claim loop. Wake events (a batch from bell; an empty
// batch asks for a probe) and freed slots lead to claims while a slot is
// free. A claim made from an event sends that event as its body; a probe
// sends {} (the runner's oldest wake) and stops after the first 204. A
// probe follows every finished claim, since a wake queued for an entity
// that the runner itself held is claimable only after that claim ends.
func (r *Runner) dispatch(ctx, hard context.Context, handlers *sync.WaitGroup, bell <-chan []json.RawMessage, fatal <-chan error) error {
	free := r.cfg.Concurrency
	freed := make(chan struct{}, r.cfg.Concurrency)
	var queue []json.RawMessage
	probe := false
	var retry <-chan time.Time
	bo := r.newBackoff()
	for {
		if ctx.Err() == nil && retry == nil && free > 0 && (len(queue) > 0 || probe) {
			var event json.RawMessage
			fromEvent := len(queue) > 0
			if fromEvent {
				event, queue = queue[0], queue[1:]
			}
			n, err := r.claim(ctx, event)
			switch {
			case err == nil && n == nil:
				bo.reset()
				if !fromEvent {
					probe = false
				}
			case err == nil:
				bo.reset()
				free--
				r.inFlight.Add(1)
				handlers.Go(func() {
					defer func() { freed <- struct{}{} }()
					defer r.inFlight.Add(-1)
					r.runClaim(ctx, hard, n)
				})
			case errors.Is(err, ErrRunnerTokenRefused):
				return err
			default:
				var ae *APIError
				if !transient(err) && !(errors.As(err, &ae) && ae.Code == "RUNNER_DISABLED") {
					return err
				}
				r.log.Warn("claim failed; retrying", "err", err)
				if fromEvent {
					queue = append([]json.RawMessage{event}, queue...)
				}
				retry = time.After(bo.next())
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-fatal:
			return err
		case evs := <-bell:
			if len(evs) == 0 {
				probe = true
				continue
			}
			queue = append(queue, evs...)
			if len(queue) > maxQueued {
				queue = queue[len(queue)-maxQueued:]
				probe = true
			}
		case <-freed:
			free++
			probe = true
		case <-retry:
			retry = nil
		}
	}
}

// claim asks for a wake; nil without error means no work. event is the
// wake event to send as the body, or nil for {}. The request itself is not
// cut short by ctx (an answer lost to a cancel would leave a claim nobody
// runs until its lease ends); a claim that arrives after ctx ended is
// released at once.
func (r *Runner) claim(ctx context.Context, event json.RawMessage) (*notification, error) {
	body := map[string]json.RawMessage{}
	if len(event) > 0 {
		if err := json.Unmarshal(event, &body); err != nil {
			body = map[string]json.RawMessage{}
		}
	}
	if r.cfg.LeaseTTL > 0 {
		body["lease_ttl_ms"] = json.RawMessage(fmt.Sprint(r.cfg.LeaseTTL.Milliseconds()))
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	a, err := r.c.do(cctx, http.MethodPost, "/_electric/runners/"+r.cfg.RunnerID+"/claim", r.token, body)
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	switch a.status {
	case http.StatusNoContent:
		return nil, nil
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusNotFound:
		return nil, fmt.Errorf("%w: %w", ErrRunnerTokenRefused, a.apiError("claim"))
	default:
		ae := a.apiError("claim")
		if a.status == http.StatusConflict && (ae.Code == "ALREADY_CLAIMED" || ae.Code == "NO_PENDING_WORK") {
			return nil, nil
		}
		return nil, ae
	}
	n := &notification{}
	if err := json.Unmarshal(a.body, n); err != nil {
		return nil, fmt.Errorf("claim: decode wake notification: %w", err)
	}
	if err := n.validate(); err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	return n, nil
}

// liveness heartbeats the runner's own liveness lease until ctx ends.
func (r *Runner) liveness(ctx context.Context) {
	lease := min(max(3*r.cfg.LivenessInterval, time.Second), 10*time.Minute)
	t := time.NewTicker(r.cfg.LivenessInterval)
	defer t.Stop()
	for {
		body := map[string]any{
			"lease_ms": lease.Milliseconds(),
			"diagnostics": map[string]any{
				"client": "pullwake-go-runner", "concurrency": r.cfg.Concurrency, "in_flight": r.inFlight.Load(),
			},
		}
		a, err := r.c.do(ctx, http.MethodPost, "/_electric/runners/"+r.cfg.RunnerID+"/heartbeat", r.token, body)
		if err == nil && a.status != http.StatusOK {
			err = a.apiError("runner heartbeat")
		}
		if err != nil && ctx.Err() == nil {
			r.log.Warn("runner heartbeat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
