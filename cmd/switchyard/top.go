package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/switchyard-go/switchyard/dashboard"
)

// ANSI sequences top redraws with: no TUI library, just cursor home and erasing.
const (
	ansiClear     = "\x1b[2J"
	ansiHome      = "\x1b[H"
	ansiEraseLine = "\x1b[K"
	ansiEraseDown = "\x1b[J"
)

// topEvents is how many of the rule's latest events top shows.
const topEvents = 8

// topCmd prints the dashboard of one channel in the terminal, redrawn in place after every
// poll until interrupted; with --once it prints the first frame and exits.
func topCmd(ctx context.Context, e env) error {
	ch, err := e.arg(1, "channel name")
	if err != nil {
		return err
	}
	d, err := e.dashboard(ch)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx) }()
	first := true
	for {
		next := d.Updated()
		select {
		case err := <-ran:
			return err
		case <-next:
		}
		v := d.Snapshot()
		if e.o.once {
			cancel()
			<-ran
			if e.o.output == "json" {
				return json.NewEncoder(e.out).Encode(v)
			}
			writeTop(e.out, v)
			if v.Error != "" {
				return errors.New(v.Error)
			}
			return nil
		}
		var frame bytes.Buffer
		writeTop(&frame, v)
		var screen strings.Builder
		if first {
			screen.WriteString(ansiClear)
			first = false
		}
		screen.WriteString(ansiHome)
		sc := bufio.NewScanner(&frame)
		for sc.Scan() {
			screen.WriteString(sc.Text() + ansiEraseLine + "\n")
		}
		screen.WriteString(ansiEraseDown)
		if _, err := io.WriteString(e.out, screen.String()); err != nil {
			return err
		}
	}
}

// writeTop writes one frame of top: per channel its rule, a row per app and color, a row per
// instance, and the latest events.
func writeTop(w io.Writer, v dashboard.View) {
	fmt.Fprintf(w, "switchyard top  %s  (poll %d ms; rates over the last %d s)\n", v.At.Format("15:04:05"), v.PollMS, v.SpanS)
	if v.Error != "" {
		fmt.Fprintf(w, "\n%s\n", v.Error)
	}
	for _, ch := range v.Channels {
		state := "closed"
		if ch.Releasing {
			state = "releasing"
		}
		fmt.Fprintf(w, "\n%s  %s  target blue %.1f%%\n\n", ch.Channel, state, ch.TargetBlue)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "APP\tCOLOR\tTARGET\tOBSERVED\tREQ/S\tERR%\tP50 MS\tP99 MS\tIN FLIGHT\tCROSS/S\tMQ/S\tJOB/S\tREADY\tWARMING\tOFFLINE\tDRAINED\tNO ANSWER")
		for _, a := range ch.Apps {
			for _, c := range a.Colors {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f\t%.1f\t%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\t%d\t%d\n",
					a.App, c.Color, pct(c.TargetPercent), pct(observed(a, c.Color)), c.RPS, c.ErrorPercent, ms(c.P50MS), ms(c.P99MS),
					c.InFlight, c.CrossingsPS, c.MessagesPS, c.JobRunsPS,
					c.States.Ready, c.States.Warming, c.States.Offline, c.States.Drained, c.States.NoAnswer)
			}
		}
		_ = tw.Flush()
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "INSTANCE\tAPP\tCOLOR\tVERSION\tSTATE\tREQ/S\tERR%\tP99 MS\tIN FLIGHT\tLOAD")
		for _, a := range ch.Apps {
			for _, in := range a.Instances {
				if in.State == dashboard.StateNoAnswer {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\tno answer: %s\n", in.ID, a.App, in.Color, dash(in.Version), in.NoAnswer)
					continue
				}
				state := in.State
				if in.Lifecycle != "serving" {
					state += " (" + in.Lifecycle + ")"
				}
				load := pct(in.LoadPercent)
				if in.Hot {
					load += " !"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%s\t%d\t%s\n", in.ID, a.App, in.Color, dash(in.Version), state,
					in.RPS, in.ErrorPercent, ms(in.P99MS), in.InFlight, load)
			}
			if a.Error != "" {
				fmt.Fprintf(tw, "(%s: %s)\n", a.App, a.Error)
			}
		}
		_ = tw.Flush()
		if n := len(ch.Events); n > 0 {
			fmt.Fprintln(w, "\nEVENTS")
			for _, ev := range ch.Events[max(0, n-topEvents):] {
				change := ""
				if ev.Kind == "OnFlowChange" {
					change = fmt.Sprintf(" %g→%g", ev.Old, ev.New)
				}
				fmt.Fprintf(w, "%s  %s%s\n", ev.At.Local().Format("15:04:05"), ev.Kind, change)
			}
		}
	}
}

// observed is color's share of the app's blue and green requests, nil when there were none
// or for a colorless row.
func observed(a dashboard.App, color string) *float64 {
	if a.ObservedBlue == nil {
		return nil
	}
	switch color {
	case "blue":
		return a.ObservedBlue
	case "green":
		g := 100 - *a.ObservedBlue
		return &g
	}
	return nil
}

func pct(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", *p)
}

func ms(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f", *p)
}
