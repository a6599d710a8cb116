// Package kubernetes_test checks the example Deployments against what lifecycle needs: a
// termination grace period that covers the worst-case Offline, probes on the admin endpoints
// that mean what the README says, and no hook that depends on tools the image may lack.
package kubernetes_test

import (
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
	"sigs.k8s.io/yaml"

	"github.com/switchyard-go/switchyard/lifecycle"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// deployment is the part of an apps/v1 Deployment the checks read.
type deployment struct {
	Metadata struct {
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Template struct {
			Spec struct {
				TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds"`
				Containers                    []struct {
					Name string `json:"name"`
					Env  []struct {
						Name  string `json:"name"`
						Value string `json:"value"`
					} `json:"env"`
					StartupProbe   *probe `json:"startupProbe"`
					LivenessProbe  *probe `json:"livenessProbe"`
					ReadinessProbe *probe `json:"readinessProbe"`
					Lifecycle      *struct {
						PreStop any `json:"preStop"`
					} `json:"lifecycle"`
				} `json:"containers"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

type probe struct {
	HTTPGet *struct {
		Path string `json:"path"`
		Port any    `json:"port"`
	} `json:"httpGet"`
}

// processExit is what the grace period must leave, beyond OfflineTimeout, for the process to
// return from Run and exit before the kubelet's SIGKILL.
const processExit = 2 * time.Second

func TestDeploymentsCoverTheWorstCaseOffline(t *testing.T) {
	// The example runs lifecycle with its defaults: the worst case is the defaults' bound.
	worst := lifecycle.Config{}.OfflineTimeout()
	for _, color := range []string{"blue", "green"} {
		file := "deployment-" + color + ".yaml"
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var d deployment
		if err := yaml.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if d.Metadata.Labels["color"] != color {
			t.Errorf("%s: label color %q, want %q", file, d.Metadata.Labels["color"], color)
		}
		spec := d.Spec.Template.Spec
		grace := 30 * time.Second // Kubernetes' default
		if spec.TerminationGracePeriodSeconds != nil {
			grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
		}
		if grace < worst+processExit {
			t.Errorf("%s: terminationGracePeriodSeconds %v does not cover Offline's worst case %v (MaxDrain + StopTimeout + RequestTimeout + 1 s) plus %v to exit: the kubelet would kill a draining pod",
				file, grace, worst, processExit)
		}
		if len(spec.Containers) != 1 {
			t.Fatalf("%s: %d containers, want 1", file, len(spec.Containers))
		}
		c := spec.Containers[0]
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
			t.Errorf("%s: a preStop hook: SIGTERM drains by itself, and an exec hook needs a tool (curl) that distroless images lack", file)
		}
		if c.StartupProbe != nil && c.StartupProbe.HTTPGet != nil && c.StartupProbe.HTTPGet.Path == "/healthz/live" {
			t.Errorf("%s: a startupProbe on /healthz/live waits for nothing (it answers 200 as soon as the admin server runs)", file)
		}
		for _, p := range []struct {
			name string
			p    *probe
			path string
		}{{"livenessProbe", c.LivenessProbe, "/healthz/live"}, {"readinessProbe", c.ReadinessProbe, "/healthz/ready"}} {
			if p.p == nil || p.p.HTTPGet == nil || p.p.HTTPGet.Path != p.path || p.p.HTTPGet.Port != "admin" {
				t.Errorf("%s: %s must GET %s on the admin port", file, p.name, p.path)
			}
		}
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		if env["SWITCHYARD_COLOR"] != color {
			t.Errorf("%s: SWITCHYARD_COLOR %q, want %q", file, env["SWITCHYARD_COLOR"], color)
		}
		if _, ok := env["POD_IP"]; !ok {
			t.Errorf("%s: no POD_IP: lifecycle could not advertise the pod's address", file)
		}
	}
}
