// Command switchyard is the operator CLI: it drives releases (channels) and shows instances.
//
//	switchyard channel open <channel> --apps order,inventory
//	switchyard channel shift <channel> --blue 1
//	switchyard channel finish <channel>
//	switchyard channel status [<channel>]
//	switchyard channel list
//	switchyard channel delete <channel> --yes [--force]
//	switchyard instances <app>
//	switchyard watch <channel>
//	switchyard dashboard [--listen 127.0.0.1:8080] [--channel C]
//	switchyard top <channel> [--once]
//	switchyard release run <plan.yaml> [--poll 250ms]
//	switchyard release status <channel>
//	switchyard release pause|resume|promote|abort <channel>
//
// etcd: --endpoints or SWITCHYARD_ETCD_ENDPOINTS (comma-separated), --prefix, TLS (--cacert,
// --cert, --key) and auth (--user, --password). -o json on read commands. Exit codes: 0 ok,
// 1 refused (validation or a concurrent change; the message says why), 2 usage, 3 etcd
// unreachable.
//
// --timeout (default 5s) is how long channel, instances and release commands try etcd. The channel
// commands make each etcd request an attempt of its own (500 ms, doubling up to --timeout)
// and make an unanswered one again within --timeout, so a leader change or a dead member
// costs an attempt, not the command. A write is a compare-and-swap that carries a write id:
// sent again after its answer was lost, it is never applied twice, and it reports done when
// it finds that its earlier attempt was applied; when it finds that another write changed the
// rule instead it says so, with that write's reason and time (exit 1). Exit 3 says what was
// tried and for how long, and whether the write was sent: "nothing was written", or "it may
// have been applied: read the rule (switchyard channel status C) before writing again".
// Each release command runs within --timeout, the wait for the runner included: exit 3 only
// when etcd did not answer within it (saying whether the command may have been recorded), 1
// when the runner did not carry it out in time (the command stays recorded for it) or another
// person's command came in between (named).
//
// A rule key that cannot be read (garbage, a schema from a newer tool, a rule stored under
// another channel's key) hides nothing else: list and status show every readable rule and
// print a warning on stderr per unreadable key, naming it and the command that deletes it;
// shift and finish of readable channels work; open refuses only apps the key may name.
// channel delete removes such a key, or a closed rule nobody wants. Without --yes it only
// says what it would delete and exits 2. A rule with a release open is refused (exit 1)
// unless --force is given too, because deleting it ends the release at once (traffic goes
// straight back to 50/50 and its apps leave the channel): drain with shift, then finish.
//
// dashboard serves a live web page of a release (package dashboard): for each app of the
// channel (of every channel without --channel), per color, requests/s, error %, p50/p99,
// in-flight, instances by state, target vs observed split, crossings, mq and job work; each
// instance's load; the rule's events. It polls each instance's /stats (on its admin server)
// every second, prints the page's URL and serves until interrupted; /api/view is the JSON
// and /api/events the Server-Sent Events behind the page. top prints the same figures for
// one channel in the terminal, redrawn in place every second (--once: one frame, then exit;
// with -o json, the View as JSON).
//
// release runs a release plan (package release): it moves the channel's traffic to the new
// color step by step, judges each step on the instances' /stats (the new color's error rate
// and p99 against the old one's), and at a breach sends all traffic back to the old color at
// once. run drives the plan until it ends, logging every step and verdict; it exits 0 when
// the plan succeeded and 1 with the verdict when it switched back or was aborted, or when
// another runner drives the channel (the message names it). Interrupted, it leaves the plan
// where it is; run the same plan again to resume it. status prints the plan's state, step,
// figures and verdicts (-o json: the progress record); pause, resume, promote (pass the
// current step now; at at_end: wait, succeed) and abort (switch back now) are carried out by
// the running runner within a poll.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// Exit codes.
const (
	exitOK          = 0
	exitRefused     = 1
	exitUsage       = 2
	exitUnreachable = 3
)

const usage = `usage: switchyard <command> [flags]

commands:
  channel open <channel> --apps a,b   open a release of apps a and b (at 50 %)
  channel shift <channel> --blue P    set blue's share to P % (0 drains blue, 100 drains green)
  channel finish <channel>            close the release (back to 50/50)
                                      open, shift and finish take --reason "why" (stored in the
                                      rule; every subscriber's event and watch show it)
  channel status [<channel>]          rules with a bar of the split
  channel list                        every channel
  channel delete <channel> --yes      delete the channel's rule key: a broken (unreadable) one,
                                      or a closed rule; without --yes, say what would be deleted
                                      (exit 2). An open release needs --force too (deleting it
                                      ends the release at once; prefer finish)
  instances <app>                     the app's registered instances
  watch <channel>                     follow the channel's events until interrupted
  dashboard [--listen H:P] [--channel C]
                                      serve a live web page of the release (default
                                      127.0.0.1:8080; every channel without --channel) until
                                      interrupted; JSON at /api/view, SSE at /api/events
  top <channel> [--once]              the same figures in the terminal, redrawn every second;
                                      --once prints one frame and exits (-o json: the View)
  release run <plan.yaml> [--poll D]  run a release plan until it ends: steps, analysis, and
                                      switch-back at a breach (exit 1 with the verdict);
                                      interrupted, run it again to resume (--poll: how often
                                      the instances are judged, default 250ms)
  release status <channel>            the plan's state, step, figures and verdicts
  release pause|resume|promote|abort <channel>
                                      hold the step / go on / pass the step now (at_end: wait:
                                      succeed) / switch back now
  help                                this text (also -h, --help)

flags (anywhere after the command):
  --endpoints h:p,…   etcd endpoints (default $SWITCHYARD_ETCD_ENDPOINTS, else 127.0.0.1:2379)
  --prefix P          key prefix (default /switchyard)
  --cacert, --cert, --key, --user, --password   etcd TLS and auth
  --timeout D         how long a command tries etcd (default 5s): channel and release commands retry
                      unanswered requests within it (attempts of 500ms, doubling), so a
                      leader change costs an attempt; exit 3 says what was tried
  -o json             machine-readable output (read commands)

A rule key that cannot be read does not stop list, status, shift or finish of the others:
they warn on stderr, naming the key. open refuses the apps such a key may name.

exit codes: 0 ok (and help), 1 refused (validation or a concurrent change, also another
write that changed the rule while this one's answer from etcd was lost; the message says
why), 2 usage, 3 etcd unreachable within --timeout (the message says whether the write may
have been applied). Under "go run" these are reported as "exit status N" and
go run itself exits 1: build the command (go build ./cmd/switchyard) where the code matters.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

// opts are the flags every command takes.
type opts struct {
	endpoints, prefix, cacert, cert, key, user, password, output, apps string
	blue, listen, channel, reason                                      string
	timeout, poll                                                      time.Duration
	yes, force, once                                                   bool
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// confirmError is a command that needs a confirmation flag: exit 2, without the usage text.
type confirmError struct{ msg string }

func (e confirmError) Error() string { return e.msg }

// parse reads flags and positional arguments in any order.
func parse(args []string, getenv func(string) string) (opts, []string, error) {
	var o opts
	fs := flag.NewFlagSet("switchyard", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.endpoints, "endpoints", getenv("SWITCHYARD_ETCD_ENDPOINTS"), "")
	fs.StringVar(&o.prefix, "prefix", deploy.DefaultPrefix, "")
	fs.StringVar(&o.cacert, "cacert", "", "")
	fs.StringVar(&o.cert, "cert", "", "")
	fs.StringVar(&o.key, "key", "", "")
	fs.StringVar(&o.user, "user", "", "")
	fs.StringVar(&o.password, "password", "", "")
	fs.StringVar(&o.output, "o", "", "")
	fs.StringVar(&o.apps, "apps", "", "")
	fs.StringVar(&o.blue, "blue", "", "")
	fs.StringVar(&o.reason, "reason", "", "")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "")
	fs.BoolVar(&o.yes, "yes", false, "")
	fs.BoolVar(&o.force, "force", false, "")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "")
	fs.StringVar(&o.channel, "channel", "", "")
	fs.BoolVar(&o.once, "once", false, "")
	fs.DurationVar(&o.poll, "poll", 0, "")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return o, nil, err
			}
			return o, nil, usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if o.endpoints == "" {
		o.endpoints = "127.0.0.1:2379"
	}
	if o.output != "" && o.output != "json" {
		return o, nil, usageError{fmt.Sprintf("-o %q: the only output format is json", o.output)}
	}
	return o, pos, nil
}

func (o opts) client() (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: strings.Split(o.endpoints, ","), DialTimeout: o.timeout,
		Username: o.user, Password: o.password, Logger: zap.NewNop()}
	if o.cacert != "" || o.cert != "" {
		tlsCfg, err := transport.TLSInfo{TrustedCAFile: o.cacert, CertFile: o.cert, KeyFile: o.key}.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("TLS: %w", err)
		}
		cfg.TLS = tlsCfg
	}
	return clientv3.New(cfg)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	o, pos, err := parse(args, getenv)
	switch {
	case errors.Is(err, flag.ErrHelp) || (err == nil && len(pos) > 0 && pos[0] == "help"):
		fmt.Fprint(stdout, usage)
		return exitOK
	case err != nil || len(pos) == 0:
		if err != nil {
			fmt.Fprintln(stderr, "switchyard:", err)
		}
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, err := lookup(pos)
	if err != nil {
		return exit(err, o, stderr)
	}
	cli, err := o.client()
	if err != nil {
		fmt.Fprintln(stderr, "switchyard:", err)
		return exitUsage
	}
	defer cli.Close()
	if bounded[cmdName(pos)] {
		// The command's whole time is --timeout: the Controller retries etcd within it.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	cfg := traffic.Config{Client: cli, Prefix: o.prefix, RequestTimeout: o.timeout, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return exit(cmd(ctx, env{o: o, pos: pos, cli: cli, cfg: cfg, out: stdout, err: stderr}), o, stderr)
}

// exit prints err, if any, and returns the exit code it maps to.
func exit(err error, o opts, stderr io.Writer) int {
	var ue usageError
	var ce confirmError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		fmt.Fprintln(stderr, "switchyard:", err)
		return exitUsage
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "switchyard:", err)
		fmt.Fprint(stderr, usage)
		return exitUsage
	case errors.Is(err, registry.ErrEtcdUnavailable) || errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(stderr, "switchyard: etcd unreachable at %s within --timeout %v: %v\n", o.endpoints, o.timeout, err)
		return exitUnreachable
	default:
		fmt.Fprintln(stderr, "switchyard:", err)
		return exitRefused
	}
}

// env is what a command runs with: its flags and positional arguments (pos[0] is the command,
// pos[1] the subcommand where there is one), etcd, the traffic config and the outputs.
type env struct {
	o        opts
	pos      []string
	cli      *clientv3.Client
	cfg      traffic.Config
	out, err io.Writer
}

// arg returns positional argument i, or a usage error naming what is missing.
func (e env) arg(i int, what string) (string, error) {
	if len(e.pos) <= i {
		return "", usageError{"missing " + what}
	}
	return e.pos[i], nil
}

// controller returns a Controller on the command's etcd.
func (e env) controller() (*traffic.Controller, error) { return traffic.NewController(e.cfg) }

// commands maps "command" or "command subcommand" to its function: one function per command.
var commands = map[string]func(context.Context, env) error{
	"channel open":    channelOpen,
	"channel shift":   channelShift,
	"channel finish":  channelFinish,
	"channel status":  channelStatus,
	"channel list":    channelStatus,
	"channel delete":  channelDelete,
	"instances":       instancesCmd,
	"watch":           watchCmd,
	"dashboard":       dashboardCmd,
	"top":             topCmd,
	"release run":     releaseRun,
	"release status":  releaseStatus,
	"release pause":   releaseCommand,
	"release resume":  releaseCommand,
	"release promote": releaseCommand,
	"release abort":   releaseCommand,
}

// bounded are the commands that end by themselves: their context ends after --timeout.
// (watch, dashboard, top and release run go on until interrupted; release status and release
// pause|resume|promote|abort bound themselves to --timeout in release.go, the wait for the
// runner included.)
var bounded = map[string]bool{
	"channel open": true, "channel shift": true, "channel finish": true, "channel status": true,
	"channel list": true, "channel delete": true, "instances": true,
}

// cmdName is the key of commands that pos names ("channel open", "instances").
func cmdName(pos []string) string {
	if _, ok := commands[pos[0]]; ok || len(pos) < 2 {
		return pos[0]
	}
	return pos[0] + " " + pos[1]
}

// subcommands lists the subcommands of the commands that have them, for usage errors.
var subcommands = map[string]string{
	"channel": "open, shift, finish, status, list, delete",
	"release": "run, status, pause, resume, promote, abort",
}

// lookup finds the command that pos names.
func lookup(pos []string) (func(context.Context, env) error, error) {
	if cmd, ok := commands[pos[0]]; ok {
		return cmd, nil
	}
	subs, ok := subcommands[pos[0]]
	if !ok {
		return nil, usageError{fmt.Sprintf("unknown command %q", pos[0])}
	}
	if len(pos) < 2 {
		return nil, usageError{fmt.Sprintf("missing %s subcommand (%s)", pos[0], subs)}
	}
	if cmd, ok := commands[pos[0]+" "+pos[1]]; ok {
		return cmd, nil
	}
	return nil, usageError{fmt.Sprintf("unknown %s subcommand %q", pos[0], pos[1])}
}
