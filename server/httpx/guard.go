package httpx

import "net/http"

// HandlerFunc is a handler that returns its error; the caller answers it
// (Fail) behind the route's wrappers.
type HandlerFunc = func(http.ResponseWriter, *http.Request) error

// Guard runs check before fn: a credential check, say. A refusal is the
// handler's error, and fn does not run.
func Guard(check func(*http.Request) error, fn HandlerFunc) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := check(r); err != nil {
			return err
		}
		return fn(w, r)
	}
}
