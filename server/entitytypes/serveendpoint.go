package entitytypes

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/pullwake/pullwake/server/httpx"
)

// Serve endpoints: POST /_electric/entity-types {"name", "serve_endpoint"}
// (no description, no creation_schema) registers the manifest the
// endpoint answers to an empty PUT, as Electric's server does. The
// endpoint is an admin-given URL, like a webhook's: only absolute http(s)
// URLs, redirects not followed, at most maxManifest bytes read, within
// serveEndpointTimeout. An endpoint that cannot be reached, answers
// anything but 2xx, or answers no JSON object is 422
// SERVE_ENDPOINT_UNREACHABLE (Electric answers 502; pullwake answers no
// request with a 5xx: the request named an endpoint that cannot serve, the
// server did not fail); a manifest naming another type is 400
// SERVE_ENDPOINT_NAME_MISMATCH. Either way nothing is registered.

const (
	maxManifest          = 64 << 10
	serveEndpointTimeout = 10 * time.Second
)

// isAbsent reports whether a raw JSON field was left out or is null.
func isAbsent(v json.RawMessage) bool {
	t := bytes.TrimSpace(v)
	return len(t) == 0 || string(t) == "null"
}

// newOutboundClient never follows redirects: the URL called is the one given.
func newOutboundClient() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

func unreachable(format string, args ...any) error {
	return httpx.Errorf(http.StatusUnprocessableEntity, "SERVE_ENDPOINT_UNREACHABLE", format, args...)
}

// fetchServeManifest PUTs to endpoint and returns the registration it
// answers, which must name the type name.
func (s *Service) fetchServeManifest(ctx context.Context, name, endpoint string) (entityTypeBody, error) {
	if err := httpx.CheckOutboundURL("serve_endpoint", endpoint); err != nil {
		return entityTypeBody{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, serveEndpointTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, endpoint, nil)
	if err != nil {
		return entityTypeBody{}, httpx.BadRequest("field serve_endpoint: %v", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.outbound.Do(req)
	if err != nil {
		return entityTypeBody{}, unreachable("serve endpoint %s: %v", endpoint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return entityTypeBody{}, unreachable("serve endpoint %s answered %d", endpoint, resp.StatusCode)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return entityTypeBody{}, unreachable("serve endpoint %s: reading the manifest: %v", endpoint, err)
	}
	if len(raw) > maxManifest {
		return entityTypeBody{}, unreachable("serve endpoint %s: manifest over %d bytes", endpoint, maxManifest)
	}
	var manifest entityTypeBody
	if err := json.Unmarshal(raw, &manifest); err != nil {
		return entityTypeBody{}, unreachable("serve endpoint %s: the manifest is not a registration: %v", endpoint, err)
	}
	if manifest.Name == nil || *manifest.Name != name {
		got := "no name"
		if manifest.Name != nil {
			got = fmt.Sprintf("%q", *manifest.Name)
		}
		return entityTypeBody{}, httpx.Errorf(http.StatusBadRequest, "SERVE_ENDPOINT_NAME_MISMATCH",
			"serve endpoint %s answered a manifest with %s, expected %q", endpoint, got, name)
	}
	manifest.ServeEndpoint = nil
	return manifest, nil
}
