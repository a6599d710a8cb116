package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/release"
)

// runner returns a release Runner on the command's etcd, logging to log.
func (e env) runner(log io.Writer) (*release.Runner, error) {
	return release.New(release.Config{Client: e.cli, Prefix: e.o.prefix, Poll: e.o.poll, RequestTimeout: e.o.timeout,
		Logger: slog.New(slog.NewTextHandler(log, nil))})
}

// releaseRun runs the plan file pos[2] until it ends: exit 0 when it succeeded, 1 (with the
// verdict) when it switched back, was aborted or was refused.
func releaseRun(ctx context.Context, e env) error {
	file, err := e.arg(2, "plan file (switchyard release run plan.yaml)")
	if err != nil {
		return err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("release: reading the plan: %w", err)
	}
	plan, err := release.ParsePlan(data)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	r, err := e.runner(e.out)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "switchyard: running %s: channel %s, %s new, %d steps (interrupt to stop; run it again to resume)\n",
		file, plan.Channel, plan.New, len(plan.Steps))
	p, err := r.Run(ctx, plan)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "switchyard: %s\n", p.Note)
	return nil
}

// releaseStatus prints a channel's release progress, reading etcd within --timeout.
func releaseStatus(ctx context.Context, e env) error {
	ch, err := e.arg(2, "channel name")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, e.o.timeout)
	defer cancel()
	r, err := e.runner(io.Discard)
	if err != nil {
		return err
	}
	p, err := r.Status(ctx, ch)
	if err != nil {
		return err
	}
	if e.o.output == "json" {
		return json.NewEncoder(e.out).Encode(p)
	}
	printProgress(e.out, p)
	return nil
}

// releaseCommand sends pos[1] (pause, resume, promote, abort) to a channel's plan and waits
// for its runner to carry it out, all within --timeout: Runner.Command makes each etcd
// request in attempts within it and recognises its own command after a lost answer. It exits
// 3 only when etcd did not answer within --timeout (the message says what was tried and
// whether the command may have been recorded), 1 when the command was refused, another
// person's command came in between, or the runner did not carry it out in time.
func releaseCommand(ctx context.Context, e env) error {
	ch, err := e.arg(2, "channel name")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, e.o.timeout)
	defer cancel()
	r, err := e.runner(io.Discard)
	if err != nil {
		return err
	}
	p, err := r.Command(ctx, ch, release.Command(e.pos[1]))
	if err != nil {
		return err
	}
	if e.o.output == "json" {
		return json.NewEncoder(e.out).Encode(p)
	}
	fmt.Fprintf(e.out, "%s: %s at step %d/%d", ch, p.State, p.Step+1, len(p.Plan.Steps))
	if p.Note != "" {
		fmt.Fprintf(e.out, ": %s", p.Note)
	}
	fmt.Fprintln(e.out)
	return nil
}

// printProgress writes a plan's progress for people.
func printProgress(w io.Writer, p release.Progress) {
	runner := p.Runner
	if runner == "" {
		runner = "none"
		if !p.State.Final() {
			runner += " (run the plan again to go on)"
		}
	}
	step := p.Plan.Steps[p.Step]
	fmt.Fprintf(w, "channel %s: %s, %s new, step %d/%d (%s %g %%, hold %v) since %s\n", p.Plan.Channel, p.State, p.Plan.New,
		p.Step+1, len(p.Plan.Steps), p.Plan.New, step.Percent, step.Hold, p.StepStarted.Local().Format(time.TimeOnly))
	fmt.Fprintf(w, "runner: %s\n", runner)
	if p.Note != "" {
		fmt.Fprintf(w, "now: %s\n", p.Note)
	}
	if p.Command != "" {
		fmt.Fprintf(w, "pending: %s by %s at %s\n", p.Command, p.CommandBy, p.CommandAt.Local().Format(time.TimeOnly))
	}
	if len(p.Figures) > 0 && !p.State.Final() {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "APP\t%s REQ\t%s ERR%%\t%s P99\t%s REQ\t%s ERR%%\t%s P99\n", up(p.Plan.New), up(p.Plan.New), up(p.Plan.New), up(p.Plan.Old()), up(p.Plan.Old()), up(p.Plan.Old()))
		for _, f := range p.Figures {
			fmt.Fprintf(tw, "%s\t%d\t%.1f\t%s\t%d\t%.1f\t%s\n", f.App, f.NewRequests, f.NewErrorPct, p99(f.NewP99MS), f.OldRequests, f.OldErrorPct, p99(f.OldP99MS))
		}
		_ = tw.Flush()
	}
	for _, v := range p.Verdicts {
		fmt.Fprintf(w, "%s  %s\n", v.At.Local().Format(time.TimeOnly), v.Explanation)
	}
}

func up(c deploy.Color) string { return strings.ToUpper(string(c)) }

// p99 writes a p99 in milliseconds, "-" without requests.
func p99(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", v)
}
