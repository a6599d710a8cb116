package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/dashboard"
)

// watch is the dashboard of channel trade (package dashboard, as `switchyard dashboard`
// runs it) served over HTTP: -dashboard, and the tests that read it.
type watch struct {
	url  string
	dash *dashboard.Dashboard
	srv  *http.Server
	stop context.CancelFunc
	ran  chan error // Run's result
}

// startDashboard follows channel trade through cli, polling its instances every poll (0: the
// dashboard's default, 1 s), and serves the page on addr ("127.0.0.1:0" picks a port).
func startDashboard(cli *clientv3.Client, addr string, log *slog.Logger, poll time.Duration) (*watch, error) {
	d, err := dashboard.New(dashboard.Config{Client: cli, Channel: "trade", Poll: poll, Logger: log})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-dashboard %s: %w; give a free host:port, e.g. 127.0.0.1:8080", addr, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	w := &watch{url: pageURL(ln.Addr()), dash: d, srv: &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 5 * time.Second},
		stop: stop, ran: make(chan error, 1)}
	go func() { w.ran <- d.Run(ctx) }()
	go func() { _ = w.srv.Serve(ln) }() // ends at close
	return w, nil
}

// pageURL is the page's URL on a listener's address (its loopback one if it listens on all).
func pageURL(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "http://" + a.String() + "/"
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}

// linger keeps the dashboard up for d (negative: until the process is interrupted), saying so.
func (w *watch) linger(out io.Writer, d time.Duration) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	until := "until interrupted (Ctrl-C)"
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
		until = "for " + d.String()
	}
	fmt.Fprintf(out, "\nthe load has stopped; the dashboard stays up at %s %s (its figures cover the last %v; the events stay)\n",
		w.url, until, dashboard.Span)
	<-ctx.Done()
}

// close stops the polling and the server (ending the pages' event streams) and returns Run's
// error, if it failed.
func (w *watch) close() error {
	w.stop()
	err := <-w.ran
	w.ran <- err // a second close gets it too
	cerr := w.srv.Close()
	return errors.Join(err, cerr)
}
