package dashboard

import (
	"embed"
	"encoding/json"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the dashboard:
//
//	GET /             the page (static/index.html, embedded): it follows /api/events
//	GET /api/view     the current View as JSON
//	GET /api/events   Server-Sent Events: the current View at once, then one per poll, each
//	                  as one "data: <View JSON>" event, until the client goes away or Run
//	                  returns
//
// The page uses relative URLs, so the handler may be mounted under a path prefix (with
// http.StripPrefix) as long as the page's URL ends with a slash.
func (d *Dashboard) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, static, "static/index.html")
	})
	mux.HandleFunc("GET /api/view", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		_ = json.NewEncoder(w).Encode(d.Snapshot())
	})
	mux.HandleFunc("GET /api/events", d.serveEvents)
	return mux
}

// serveEvents streams a View per poll as Server-Sent Events.
func (d *Dashboard) serveEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write([]byte("retry: 2000\n\n")); err != nil {
		return
	}
	_ = rc.Flush()
	for {
		p := d.cur.Load()
		if !p.view.At.IsZero() {
			js, err := json.Marshal(p.view)
			if err != nil {
				return
			}
			if _, err := w.Write(append(append([]byte("data: "), js...), "\n\n"...)); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
		select {
		case <-p.next:
		case <-r.Context().Done():
			return
		case <-d.stopped:
			return
		}
	}
}
