package deploy_test

import (
	"errors"
	"fmt"

	"github.com/switchyard-go/switchyard/deploy"
)

// A component follows the drains of its instance's app: it reads the state, acts on it, and
// waits for the next change.
func ExampleDrains() {
	drains := deploy.NewManualDrains(deploy.Blue) // lifecycle's Instance in a service
	follow := func(d deploy.Drains) <-chan struct{} {
		now, changed := d.Drained()
		if now.Of(d.Color()) {
			fmt.Println("my color is drained: leave every group")
		} else {
			fmt.Println("serving; the other color drained:", now.Of(d.Color().Other()))
		}
		return changed
	}
	changed := follow(drains)
	drains.Set(deploy.Drain{Blue: true})
	<-changed
	follow(drains)
	// Output:
	// serving; the other color drained: false
	// my color is drained: leave every group
}

func ExampleValidateName() {
	err := deploy.ValidateName("app", "order/v2")
	fmt.Println(errors.Is(err, deploy.ErrInvalidName))
	fmt.Println(err)
	// Output:
	// true
	// deploy: invalid app name "order/v2": has '/' at byte 5; use only letters, digits, '.', '_' and '-'
}
