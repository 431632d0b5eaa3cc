//go:build !cgo || !linux

package rdma

import (
	"context"
	"time"
)

// This file is the build without cgo (CGO_ENABLED=0) or off Linux: the API
// exists, Open returns ErrNoRDMA, and nodes use TCP.

// Device is an opened RDMA device (never, in this build).
type Device struct{}

// Devices returns no devices in this build.
func Devices() ([]string, error) { return nil, nil }

// Open returns ErrNoRDMA in this build.
func Open(Config) (*Device, error) { return nil, ErrNoRDMA }

// Name returns "".
func (d *Device) Name() string { return "" }

// GID returns the zero GID.
func (d *Device) GID() GID { return GID{} }

// GIDIndex returns 0.
func (d *Device) GIDIndex() int { return 0 }

// MTU returns 0.
func (d *Device) MTU() int { return 0 }

// Close does nothing.
func (d *Device) Close() error { return nil }

// Register returns ErrNoRDMA.
func (d *Device) Register([]byte, Access) (*MR, error) { return nil, ErrNoRDMA }

// NewQP returns ErrNoRDMA.
func (d *Device) NewQP(QPConfig) (*QP, error) { return nil, ErrNoRDMA }

// MR is a registered memory region (never, in this build).
type MR struct{}

// Bytes returns nil.
func (m *MR) Bytes() []byte { return nil }

// Addr returns 0.
func (m *MR) Addr() uint64 { return 0 }

// LKey returns 0.
func (m *MR) LKey() uint32 { return 0 }

// RKey returns 0.
func (m *MR) RKey() uint32 { return 0 }

// Region returns the zero Region.
func (m *MR) Region() Region { return Region{} }

// Close does nothing.
func (m *MR) Close() error { return nil }

// QP is a queue pair (never, in this build).
type QP struct{}

// Endpoint returns the zero Endpoint.
func (q *QP) Endpoint() Endpoint { return Endpoint{} }

// Connect returns ErrNoRDMA.
func (q *QP) Connect(Endpoint) error { return ErrNoRDMA }

// Err returns ErrNoRDMA.
func (q *QP) Err() error { return ErrNoRDMA }

// MaxOutstanding returns 0.
func (q *QP) MaxOutstanding() int { return 0 }

// Read returns ErrNoRDMA.
func (q *QP) Read(context.Context, ...ReadOp) error { return ErrNoRDMA }

// ReadWithin returns ErrNoRDMA.
func (q *QP) ReadWithin(context.Context, time.Duration, ...ReadOp) error { return ErrNoRDMA }

// Close does nothing.
func (q *QP) Close() error { return nil }
