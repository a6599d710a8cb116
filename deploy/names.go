package deploy

import (
	"errors"
	"fmt"
	"strconv"
)

// MaxNameLen bounds app, instance, channel and job names.
const MaxNameLen = 128

// ErrInvalidName is returned (wrapped, as a *NameError) by ValidateName.
var ErrInvalidName = errors.New("deploy: invalid name")

// NameError says which name is wrong and why.
type NameError struct {
	Field string // what the name names, e.g. "app", "channel"
	Value string // the offending value, quoted
	Rule  string // what the name must be
}

func (e *NameError) Error() string {
	return fmt.Sprintf("deploy: invalid %s name %s: %s", e.Field, e.Value, e.Rule)
}

// Is makes errors.Is(err, ErrInvalidName) true.
func (e *NameError) Is(target error) bool { return target == ErrInvalidName }

// ValidateName checks an app, instance, channel or job name: 1 to MaxNameLen of
// [A-Za-z0-9._-], not "." or ".." (names are etcd key segments). field says what the name
// names, in the error.
func ValidateName(field, name string) error {
	if name == "" {
		return &NameError{Field: field, Value: `""`, Rule: "is required"}
	}
	if len(name) > MaxNameLen {
		return &NameError{Field: field, Value: strconv.Quote(name[:16] + "…"),
			Rule: fmt.Sprintf("is %d bytes long; at most %d are allowed", len(name), MaxNameLen)}
	}
	if name == "." || name == ".." {
		return &NameError{Field: field, Value: strconv.Quote(name), Rule: `must not be "." or ".."`}
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return &NameError{Field: field, Value: strconv.Quote(name),
				Rule: fmt.Sprintf("has %q at byte %d; use only letters, digits, '.', '_' and '-'", c, i)}
		}
	}
	return nil
}
