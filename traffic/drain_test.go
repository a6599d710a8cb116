package traffic_test

import (
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/traffic"
)

func TestDrainOf(t *testing.T) {
	for _, c := range []struct {
		name string
		r    traffic.Rule
		want deploy.Drain
	}{
		{"no channel", traffic.Rule{}, deploy.Drain{}},
		{"closed at 0", traffic.Rule{Releasing: false, BluePercent: 0}, deploy.Drain{}},
		{"closed at 100", traffic.Rule{Releasing: false, BluePercent: 100}, deploy.Drain{}},
		{"open at 50", traffic.Rule{Releasing: true, BluePercent: 50}, deploy.Drain{}},
		{"open at 0.1", traffic.Rule{Releasing: true, BluePercent: 0.1}, deploy.Drain{}},
		{"open at 99.9", traffic.Rule{Releasing: true, BluePercent: 99.9}, deploy.Drain{}},
		{"open at 0", traffic.Rule{Releasing: true, BluePercent: 0}, deploy.Drain{Blue: true}},
		{"open at 100", traffic.Rule{Releasing: true, BluePercent: 100}, deploy.Drain{Green: true}},
	} {
		if got := traffic.DrainOf(c.r); got != c.want {
			t.Errorf("%s: DrainOf = %+v, want %+v", c.name, got, c.want)
		}
	}
}

// A color is drained exactly when the weight its instances write is 0: the drain the
// components follow and the traffic the consumers send agree.
func TestDrainOfAgreesWithTrafficWeight(t *testing.T) {
	for _, releasing := range []bool{false, true} {
		for k := 0; k <= 1000; k++ {
			r := traffic.Rule{Releasing: releasing, BluePercent: float64(k) / 10}
			d := traffic.DrainOf(r)
			for _, c := range []deploy.Color{deploy.Blue, deploy.Green, deploy.None} {
				if d.Of(c) != (traffic.TrafficWeight(r, c) == 0) {
					t.Fatalf("%+v: %s drained %v, traffic weight %v", r, c, d.Of(c), traffic.TrafficWeight(r, c))
				}
			}
		}
	}
}
