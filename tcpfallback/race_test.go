//go:build race

package tcpfallback

// raceEnabled: the race detector's sync.Pool drops items at random, so
// allocation counts are meaningless.
const raceEnabled = true
