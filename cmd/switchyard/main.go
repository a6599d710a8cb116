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
//
// etcd: --endpoints or SWITCHYARD_ETCD_ENDPOINTS (comma-separated), --prefix, TLS (--cacert,
// --cert, --key) and auth (--user, --password). -o json on read commands. Exit codes: 0 ok,
// 1 refused (validation or a concurrent change; the message says why), 2 usage, 3 etcd
// unreachable.
//
// A rule key that cannot be read (garbage, a schema from a newer tool, a rule stored under
// another channel's key) hides nothing else: list and status show every readable rule and
// print a warning on stderr per unreadable key, naming it and the command that deletes it;
// shift and finish of readable channels work; open refuses only apps the key may name.
// channel delete removes such a key, or a closed rule nobody wants. Without --yes it only
// says what it would delete and exits 2. A rule with a release open is refused (exit 1)
// unless --force is given too, because deleting it ends the release at once (traffic goes
// straight back to 50/50 and its apps leave the channel): drain with shift, then finish.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

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
  channel status [<channel>]          rules with a bar of the split
  channel list                        every channel
  channel delete <channel> --yes      delete the channel's rule key: a broken (unreadable) one,
                                      or a closed rule; without --yes, say what would be deleted
                                      (exit 2). An open release needs --force too (deleting it
                                      ends the release at once; prefer finish)
  instances <app>                     the app's registered instances
  watch <channel>                     follow the channel's events until interrupted

flags (anywhere after the command):
  --endpoints h:p,…   etcd endpoints (default $SWITCHYARD_ETCD_ENDPOINTS, else 127.0.0.1:2379)
  --prefix P          key prefix (default /switchyard)
  --cacert, --cert, --key, --user, --password   etcd TLS and auth
  --timeout D         per-request timeout (default 5s)
  -o json             machine-readable output (read commands)

A rule key that cannot be read does not stop list, status, shift or finish of the others:
they warn on stderr, naming the key. open refuses the apps such a key may name.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

// opts are the flags every command takes.
type opts struct {
	endpoints, prefix, cacert, cert, key, user, password, output, apps string
	blue                                                               string
	timeout                                                            time.Duration
	yes, force                                                         bool
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
	fs.StringVar(&o.prefix, "prefix", registry.DefaultPrefix, "")
	fs.StringVar(&o.cacert, "cacert", "", "")
	fs.StringVar(&o.cert, "cert", "", "")
	fs.StringVar(&o.key, "key", "", "")
	fs.StringVar(&o.user, "user", "", "")
	fs.StringVar(&o.password, "password", "", "")
	fs.StringVar(&o.output, "o", "", "")
	fs.StringVar(&o.apps, "apps", "", "")
	fs.StringVar(&o.blue, "blue", "", "")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "")
	fs.BoolVar(&o.yes, "yes", false, "")
	fs.BoolVar(&o.force, "force", false, "")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
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
	if err != nil || len(pos) == 0 {
		if err != nil {
			fmt.Fprintln(stderr, "switchyard:", err)
		}
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cli, err := o.client()
	if err != nil {
		fmt.Fprintln(stderr, "switchyard:", err)
		return exitUsage
	}
	defer cli.Close()
	cfg := traffic.Config{Client: cli, Prefix: o.prefix, RequestTimeout: o.timeout, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	err = dispatch(ctx, o, pos, cli, cfg, stdout, stderr)
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
		fmt.Fprintf(stderr, "switchyard: etcd unreachable at %s: %v\n", o.endpoints, err)
		return exitUnreachable
	default:
		fmt.Fprintln(stderr, "switchyard:", err)
		return exitRefused
	}
}

func dispatch(ctx context.Context, o opts, pos []string, cli *clientv3.Client, cfg traffic.Config, out, errOut io.Writer) error {
	arg := func(i int, what string) (string, error) {
		if len(pos) <= i {
			return "", usageError{"missing " + what}
		}
		return pos[i], nil
	}
	ctl, err := traffic.NewController(cfg)
	if err != nil {
		return err
	}
	switch pos[0] {
	case "channel":
		sub, err := arg(1, "channel subcommand (open, shift, finish, status, list, delete)")
		if err != nil {
			return err
		}
		switch sub {
		case "open", "shift", "finish":
			ch, err := arg(2, "channel name")
			if err != nil {
				return err
			}
			var r traffic.Rule
			switch sub {
			case "open":
				if o.apps == "" {
					return usageError{"channel open needs --apps a,b"}
				}
				r, err = ctl.Open(ctx, ch, strings.Split(o.apps, ","))
			case "shift":
				p, perr := strconv.ParseFloat(o.blue, 64)
				if o.blue == "" || perr != nil {
					return usageError{fmt.Sprintf("channel shift needs --blue <percent from 0 to 100>, got %q", o.blue)}
				}
				r, err = ctl.Shift(ctx, ch, p)
			case "finish":
				r, err = ctl.Finish(ctx, ch)
			}
			if err != nil {
				return err
			}
			if err := printRules(out, o, []traffic.Rule{r}); err != nil {
				return err
			}
			// The write is done; the warnings are a courtesy, so a failed read is not reported.
			if _, bad, err := ctl.Scan(ctx); err == nil {
				warnUnreadable(errOut, bad)
			}
			return nil
		case "status", "list":
			rules, bad, err := ctl.Scan(ctx)
			if err != nil {
				return err
			}
			if len(pos) > 2 {
				r, err := ctl.Get(ctx, pos[2])
				if err != nil {
					return err
				}
				rules = []traffic.Rule{r}
			}
			warnUnreadable(errOut, bad)
			return printRules(out, o, rules)
		case "delete":
			ch, err := arg(2, "channel name")
			if err != nil {
				return err
			}
			return deleteRule(ctx, o, cli, ctl, ch, out)
		}
		return usageError{fmt.Sprintf("unknown channel subcommand %q", sub)}
	case "instances":
		app, err := arg(1, "app name")
		if err != nil {
			return err
		}
		return instances(ctx, o, cli, app, out, errOut)
	case "watch":
		ch, err := arg(1, "channel name")
		if err != nil {
			return err
		}
		rules, err := traffic.NewClient(ctx, cfg)
		if err != nil {
			return err
		}
		defer rules.Close()
		enc := json.NewEncoder(out)
		done := rules.Subscribe(ch, func(e traffic.Event) {
			if o.output == "json" {
				_ = enc.Encode(map[string]any{"channel": e.Channel, "event": e.Kind.String(), "old": e.Old, "new": e.New})
				return
			}
			fmt.Fprintf(out, "%s  %s\n", time.Now().Format("15:04:05.000"), e)
		})
		defer done()
		<-ctx.Done()
		return nil
	}
	return usageError{fmt.Sprintf("unknown command %q", pos[0])}
}

// warnUnreadable prints a warning per rule key that cannot be read, naming it and the command
// that deletes it.
func warnUnreadable(errOut io.Writer, bad []traffic.Unreadable) {
	for _, u := range bad {
		apps := "any app (its apps cannot be read)"
		if u.Apps != nil {
			apps = strings.Join(u.Apps, ",")
		}
		fmt.Fprintf(errOut, "switchyard: warning: rule at %s cannot be read and is not shown (%v); it may name %s: instances of those apps that start now wait until it is repaired or deleted, and open refuses those apps; repair it, or delete it with: switchyard channel delete %s --yes\n",
			u.Key, u.Err, apps, shellQuote(u.Channel))
	}
}

// deleteRule is channel delete: with --yes it deletes the channel's rule key (an open
// release only with --force too); without, it says what it would delete and asks for --yes.
func deleteRule(ctx context.Context, o opts, cli *clientv3.Client, ctl *traffic.Controller, ch string, out io.Writer) error {
	key := traffic.Key(o.prefix, ch)
	if !o.yes {
		rctx, cancel := context.WithTimeout(ctx, o.timeout)
		defer cancel()
		resp, err := cli.Get(rctx, key)
		if err != nil {
			return fmt.Errorf("%w: %w", registry.ErrEtcdUnavailable, err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("%w %q: no key %s", traffic.ErrUnknownChannel, ch, key)
		}
		val := resp.Kvs[0].Value
		what := "rule"
		r, err := traffic.Unmarshal(val)
		switch {
		case err != nil:
			what = fmt.Sprintf("unreadable rule (%v)", err)
		case r.Channel != ch:
			what = fmt.Sprintf("misfiled rule (it says channel %q)", r.Channel)
		case r.Releasing:
			what = fmt.Sprintf("rule with a release OPEN at blue %g%% (deleting it ends the release at once: traffic goes straight back to 50/50 and its apps leave the channel; finish it instead, or add --force too)", r.BluePercent)
		default:
			what = "closed rule, apps " + strings.Join(r.Apps, ",")
		}
		shown := string(val)
		if len(shown) > 200 {
			shown = shown[:200] + "…"
		}
		return confirmError{fmt.Sprintf("channel delete would delete %s: %s, value %q; run it again with --yes to delete it", key, what, shown)}
	}
	if err := ctl.Delete(ctx, ch, o.force); err != nil {
		if errors.Is(err, traffic.ErrAlreadyOpen) {
			return fmt.Errorf("%w (--force)", err)
		}
		return err
	}
	fmt.Fprintf(out, "deleted %s\n", key)
	return nil
}

// shellQuote quotes a channel name for a command line when it is not a plain name.
func shellQuote(s string) string {
	if registry.ValidateName("channel", s) == nil {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

type ruleJSON struct {
	Channel     string    `json:"channel"`
	Apps        []string  `json:"apps"`
	Releasing   bool      `json:"releasing"`
	BluePercent float64   `json:"blue_percent"`
	UpdatedAt   time.Time `json:"updated_at"`
}

func printRules(out io.Writer, o opts, rules []traffic.Rule) error {
	if o.output == "json" {
		js := make([]ruleJSON, 0, len(rules))
		for _, r := range rules {
			js = append(js, ruleJSON{r.Channel, r.Apps, r.Releasing, r.BluePercent, r.UpdatedAt})
		}
		return json.NewEncoder(out).Encode(js)
	}
	for _, r := range rules {
		state := "closed"
		if r.Releasing {
			state = "releasing"
		}
		p := traffic.EffectivePercent(r)
		fmt.Fprintf(out, "%-16s %-9s apps=%s\n  %s\n", r.Channel, state, strings.Join(r.Apps, ","), bar(p))
	}
	return nil
}

// bar draws blue's share, e.g. "blue   1.0% █░░░…░ 99.0% green".
func bar(p float64) string {
	const width = 40
	n := int(math.Round(p / 100 * width))
	return fmt.Sprintf("blue %5.1f%% %s%s %5.1f%% green", p, strings.Repeat("█", n), strings.Repeat("░", width-n), 100-p)
}

type instanceJSON struct {
	ID            string  `json:"id"`
	Addr          string  `json:"addr"`
	Color         string  `json:"color"`
	Version       string  `json:"version"`
	Channel       string  `json:"channel"`
	Weight        float64 `json:"weight"`
	TrafficWeight float64 `json:"traffic_weight"`
	WarmupLeftMS  int64   `json:"warmup_left_ms"`
	AgeMS         int64   `json:"age_ms"`
	Degraded      string  `json:"degraded,omitempty"` // why it cannot keep its color's requests on its color
}

func instances(ctx context.Context, o opts, cli *clientv3.Client, app string, out, errOut io.Writer) error {
	if err := registry.ValidateName("app", app); err != nil {
		return usageError{err.Error()}
	}
	rctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	resp, err := cli.Get(rctx, registry.AppPrefix(o.prefix, app), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("%w: %w", registry.ErrEtcdUnavailable, err)
	}
	now := time.Now()
	var list []instanceJSON
	for _, kv := range resp.Kvs {
		in, err := registry.Unmarshal(kv.Value)
		if err != nil {
			fmt.Fprintf(errOut, "switchyard: skipping malformed record %s (fix or delete it): %v\n", kv.Key, err)
			continue
		}
		left := max(0, in.StartTime.Add(in.Warmup).Sub(now))
		list = append(list, instanceJSON{in.ID, in.Addr, string(in.Color), in.Version, in.Channel, in.Weight, in.TrafficWeight,
			left.Milliseconds(), now.Sub(in.StartTime).Milliseconds(), in.Degraded})
	}
	if o.output == "json" {
		if list == nil {
			list = []instanceJSON{}
		}
		return json.NewEncoder(out).Encode(list)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tCOLOR\tVERSION\tCHANNEL\tWEIGHT\tTRAFFIC WEIGHT\tWARMUP LEFT\tAGE\tDEGRADED")
	for _, i := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%g\t%.4g\t%v\t%v\t%s\n", i.ID, i.Addr, dash(i.Color), dash(i.Version), dash(i.Channel),
			i.Weight, i.TrafficWeight, time.Duration(i.WarmupLeftMS)*time.Millisecond, (time.Duration(i.AgeMS) * time.Millisecond).Round(time.Second), dash(i.Degraded))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
