package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/switchyard-go/switchyard/dashboard"
)

// dashboardCmd serves the dashboard page on --listen until interrupted.
func dashboardCmd(ctx context.Context, e env) error {
	d, err := e.dashboard(e.o.channel)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", e.o.listen)
	if err != nil {
		return fmt.Errorf("dashboard: listen on %s (choose another address with --listen): %w", e.o.listen, err)
	}
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx) }()
	fmt.Fprintf(e.out, "switchyard: dashboard at http://%s/ (interrupt to stop)\n", lis.Addr())
	// Run returns when ctx ends (or fails to load the rules): then the event streams end, so
	// Shutdown does not wait on them.
	var runErr, serveErr error
	select {
	case runErr = <-ran:
	case serveErr = <-served:
		cancel()
		runErr = <-ran
	}
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if serveErr == nil {
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			serveErr = err
		}
	}
	return errors.Join(runErr, serveErr)
}

// dashboard returns a Dashboard on the command's etcd, showing channel ("" for every one).
func (e env) dashboard(channel string) (*dashboard.Dashboard, error) {
	d, err := dashboard.New(dashboard.Config{Client: e.cli, Prefix: e.o.prefix, Channel: channel,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return nil, usageError{err.Error()}
	}
	return d, nil
}
