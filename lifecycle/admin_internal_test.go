package lifecycle

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// A caller that is not on loopback cannot take the instance offline without a token. (The
// check reads the connection's remote address; a real non-loopback connection cannot be made
// in this sandbox, so the request is built with that address.)
func TestNonLoopbackCallerIsRefused(t *testing.T) {
	i := &Instance{state: StateServing}
	h := i.adminHandler()
	for _, path := range []string{"/offline", "/online"} {
		req := httptest.NewRequest(http.MethodPost, path, nil)
		req.RemoteAddr = "10.1.2.3:40000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusForbidden {
			t.Fatalf("POST %s from 10.1.2.3: %d, want 403", path, rec.Code)
		}
	}
	if i.State() != StateServing {
		t.Fatalf("a refused request changed the state to %s", i.State())
	}
}
