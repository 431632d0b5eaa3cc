//go:build !race

package tcpfallback

// raceEnabled: see race_test.go.
const raceEnabled = false
