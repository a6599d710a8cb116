package deploy

import "fmt"

// Color is which half-cluster of an app an instance belongs to (DESIGN.md "Vocabulary"). It is
// fixed for the life of an instance.
type Color string

// The colors. None is an instance that takes no part in blue/green releases.
const (
	None  Color = ""
	Blue  Color = "blue"
	Green Color = "green"
)

// Valid reports whether c is one of the three known colors.
func (c Color) Valid() bool { return c == None || c == Blue || c == Green }

// Other is the other color of a release: Green for Blue, Blue for Green, None for None.
func (c Color) Other() Color {
	switch c {
	case Blue:
		return Green
	case Green:
		return Blue
	}
	return None
}

// ParseColor reads a color as written in configuration (SWITCHYARD_COLOR, a flag).
func ParseColor(s string) (Color, error) {
	if c := Color(s); c.Valid() {
		return c, nil
	}
	return None, fmt.Errorf("deploy: color %q: use blue, green or nothing (an instance outside blue/green releases)", s)
}
