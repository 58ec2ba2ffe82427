package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// maxBody caps how much of one answer the library reads (a stream read
// chunk is about 1 MiB).
const maxBody = 16 << 20

// APIError is an answer of the server the library did not expect: its
// status and the {"error": {"code", "message"}} body, when there is one.
type APIError struct {
	Op      string // what the library was doing, e.g. "claim"
	Status  int
	Code    string // error.code, "" when the body had none
	Message string
}

func (e *APIError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%s: %d %s: %s", e.Op, e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("%s: %d %s", e.Op, e.Status, e.Message)
}

// transient reports whether err is worth retrying: the server or the
// network failed, not the request.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests || ae.Status == http.StatusRequestTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	// Connection refused, reset, EOF mid-answer: all arrive wrapped in
	// *url.Error by net/http, which is a net.Error; anything else (a body
	// that does not encode, a context that ended) is not retried.
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// answer is one HTTP answer, read whole.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// apiError builds the error of an unexpected answer.
func (a answer) apiError(op string) *APIError {
	e := &APIError{Op: op, Status: a.status, Message: http.StatusText(a.status)}
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(a.body, &body) == nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
	}
	return e
}

// requestTimeout bounds one request whose context has no deadline of its
// own, so a server that stopped answering (without closing the
// connection) costs a retry, not a hang.
const requestTimeout = 30 * time.Second

// client speaks HTTP to one pullwake server.
type client struct {
	base string // no trailing slash
	http *http.Client
}

// url resolves a server path; absolute URLs (callbacks) are used as given.
func (c *client) url(path string) string {
	if strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
		return path
	}
	return c.base + path
}

// do sends one request. body is nil, []byte (sent as is) or a value sent
// as JSON. hdr holds extra headers as key, value pairs.
func (c *client) do(ctx context.Context, method, path, token string, body any, hdr ...string) (answer, error) {
	var rd io.Reader
	switch v := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(v)
	default:
		buf, err := json.Marshal(v)
		if err != nil {
			return answer{}, fmt.Errorf("encode %s %s body: %w", method, path, err)
		}
		rd = bytes.NewReader(buf)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), rd)
	if err != nil {
		return answer{}, fmt.Errorf("build %s %s: %w", method, path, err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.http.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxBody))
	if err != nil {
		return answer{}, fmt.Errorf("read %s %s answer: %w", method, path, err)
	}
	return answer{status: res.StatusCode, header: res.Header, body: data}, nil
}
