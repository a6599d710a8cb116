package lifecycle

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
)

// A caller that is not on loopback cannot take the instance offline without a token. (The
// check reads the connection's remote address; a real non-loopback connection cannot be made
// in this sandbox, so the request is built with that address.)
func TestNonLoopbackCallerIsRefused(t *testing.T) {
	t.Parallel()
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

// The Authorization scheme is case-insensitive (RFC 7235), and one or more spaces may follow
// it; the token itself is compared exactly.
func TestAdminTokenSchemeIsCaseInsensitive(t *testing.T) {
	t.Parallel()
	i := &Instance{state: StateNew, cfg: Config{AdminToken: "s3cret"}}
	h := i.adminHandler()
	for _, c := range []struct {
		auth string
		ok   bool
	}{
		{"Bearer s3cret", true}, {"bearer s3cret", true}, {"BEARER s3cret", true}, {"bEaReR  s3cret", true},
		{"Bearer S3CRET", false}, {"Bearer", false}, {"Bearer ", false}, {"Basic s3cret", false}, {"s3cret", false}, {"Bearers3cret", false},
	} {
		req := httptest.NewRequest(http.MethodPost, "/online", nil)
		req.RemoteAddr = "10.1.2.3:40000"
		req.Header.Set("Authorization", c.auth)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		// Past the guard, /online on an instance that is not drained answers 409.
		if got := rec.Code != http.StatusForbidden; got != c.ok {
			t.Errorf("Authorization %q: %d %q; want accepted=%v", c.auth, rec.Code, rec.Body, c.ok)
		}
	}
}

// startAdmin starts an instance whose admin server has the limits lim.
func startAdmin(t *testing.T, cli *clientv3.Client, id string, lim adminLimits) *Instance {
	t.Helper()
	prev := adminLimitsKnob.Swap(&lim)
	defer adminLimitsKnob.Store(prev) // read by Start only
	i, err := New(Config{Client: cli, App: "admin", ID: id, Warmup: -1, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		QuietPeriod: time.Millisecond, TTL: 2 * time.Second, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := i.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = i.Offline(context.Background()) })
	return i
}

// adminConn is a raw keep-alive HTTP/1.1 connection to the admin server.
type adminConn struct {
	net.Conn
	r *bufio.Reader
}

func dialAdmin(t *testing.T, i *Instance) *adminConn {
	t.Helper()
	c, err := net.Dial("tcp", i.AdminAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &adminConn{Conn: c, r: bufio.NewReader(c)}
}

// get sends GET /healthz/live and reads the answer, waiting at most d.
func (c *adminConn) get(d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(c, "GET /healthz/live HTTP/1.1\r\nHost: admin\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// closedByServer waits up to d for the server to close the connection; it reports whether it
// did (EOF or reset, rather than the deadline).
func (c *adminConn) closedByServer(d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := c.r.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// Connections left open, idle after a request or silent from the start, are closed by the
// server (here with the idle and header timeouts made short).
func TestAdminServerClosesIdleConnections(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	i := startAdmin(t, cli, "admin-idle", adminLimits{readHeader: 300 * time.Millisecond, idle: 300 * time.Millisecond, maxConns: 64})
	const n = 20
	var conns []*adminConn
	for k := range n {
		c := dialAdmin(t, i)
		if k%2 == 0 { // half idle after a request, half never send one
			if err := c.get(testutil.Deadline); err != nil {
				t.Fatal(err)
			}
		}
		conns = append(conns, c)
	}
	start := time.Now()
	for k, c := range conns {
		if !c.closedByServer(10 * time.Second) {
			t.Fatalf("connection %d of %d still open %v after the last request; the idle and header timeouts are 300ms", k+1, n, time.Since(start).Round(time.Millisecond))
		}
	}
	t.Logf("%d idle connections closed by the server within %v", n, time.Since(start).Round(time.Millisecond))
}

// The admin server holds at most maxConns connections: beyond that it closes the one idle the
// longest to let a new one in (so idle connections cannot keep the probes out), and, when
// none is idle, leaves the new one unanswered until one closes.
func TestAdminServerCapsConnections(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	lim := adminLimits{readHeader: time.Minute, idle: time.Minute, maxConns: 2}

	t.Run("idle connections make room", func(t *testing.T) {
		var ll *limitListener
		lim := lim
		lim.listening = func(l *limitListener) { ll = l }
		i := startAdmin(t, cli, "admin-cap-idle", lim)
		c1, c2 := dialAdmin(t, i), dialAdmin(t, i)
		for k, c := range []*adminConn{c1, c2} {
			if err := c.get(testutil.Deadline); err != nil {
				t.Fatal(err)
			}
			// The server marks a connection idle after it wrote the answer, which the client
			// may have read first: c1 must be idle before c2 is, so it is idle the longest.
			testutil.Eventually(t, fmt.Sprintf("%d connections idle", k+1), func() bool {
				ll.mu.Lock()
				defer ll.mu.Unlock()
				return len(ll.idle) == k+1
			})
		}
		// c1 is idle the longest: a third connection is answered, and c1 closed for it.
		if err := dialAdmin(t, i).get(testutil.Deadline); err != nil {
			t.Fatalf("a probe with every place taken by an idle connection: %v", err)
		}
		if !c1.closedByServer(10 * time.Second) {
			t.Fatal("the connection idle the longest is still open with a third one served; the cap is 2")
		}
		if err := c2.get(testutil.Deadline); err != nil {
			t.Fatalf("the other idle connection was closed too: %v", err)
		}
	})

	t.Run("busy connections hold the cap", func(t *testing.T) {
		i := startAdmin(t, cli, "admin-cap-busy", lim)
		n1, n2 := dialAdmin(t, i), dialAdmin(t, i) // accepted first (the accept queue is FIFO), silent
		c3 := dialAdmin(t, i)
		// Not answered while both places are taken: a connection beyond the cap is not
		// served. (A fixed wait, for a negative: a slow machine can only hide a breach.)
		if err := c3.get(300 * time.Millisecond); err == nil {
			t.Fatal("a third connection was answered while two held the admin server; the cap is 2")
		}
		_ = n1.Close()
		// c3's request is in its socket; once n1's place is free it is read and answered.
		_ = c3.SetReadDeadline(time.Now().Add(testutil.Deadline))
		resp, err := http.ReadResponse(c3.r, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("the third connection after one of two closed: %v %v", resp, err)
		}
		resp.Body.Close()
		_ = n2
	})
}
