package cache

import (
	"fmt"
	"strings"
)

// Policy names accepted by NewPolicyFactory.
const (
	PolicyAuto   = "auto"
	PolicyLRU    = "lru"
	PolicyMRU    = "mru"
	PolicyS3FIFO = "s3fifo"
	Policy2Q     = "2q"
)

// PolicyNames returns the names NewPolicyFactory accepts, the recommended
// default (auto) first. The slice is fresh on every call.
func PolicyNames() []string {
	return []string{PolicyAuto, PolicyLRU, PolicyMRU, PolicyS3FIFO, Policy2Q}
}

// NewPolicyFactory returns a constructor of fresh, empty policies of the
// named kind (for Config.MemoryPolicy or a --cache-policy flag). Names are
// case-insensitive; an unknown name is an error that lists the valid ones.
func NewPolicyFactory(name string) (func() Policy, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case PolicyAuto:
		return func() Policy { return NewAuto() }, nil
	case PolicyLRU:
		return func() Policy { return NewLRU() }, nil
	case PolicyMRU:
		return func() Policy { return NewMRU() }, nil
	case PolicyS3FIFO:
		return func() Policy { return NewS3FIFO() }, nil
	case Policy2Q:
		return func() Policy { return NewTwoQ() }, nil
	}
	return nil, fmt.Errorf("unknown cache policy %q: valid policies are %s", name, strings.Join(PolicyNames(), ", "))
}
