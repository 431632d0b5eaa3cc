package meta

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// newRaftLogger returns the hclog.Logger that Raft wants, writing each line
// to logger. Raft is chatty at info, so only warnings and errors pass.
func newRaftLogger(logger *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:        "raft",
		Level:       hclog.Warn,
		Output:      &slogWriter{logger: logger},
		DisableTime: true,
	})
}

// slogWriter turns hclog's formatted lines into slog records.
type slogWriter struct {
	logger *slog.Logger
}

func (w *slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		s := string(line)
		level := slog.LevelWarn
		if strings.Contains(s, "[ERROR]") {
			level = slog.LevelError
		}
		w.logger.Log(context.Background(), level, s, "component", "raft")
	}
	return len(p), nil
}

// badgerLogger routes Badger's logs to slog, dropping info and debug.
type badgerLogger struct {
	logger *slog.Logger
	db     string
}

func (l badgerLogger) Errorf(f string, args ...interface{}) {
	l.logger.Error(strings.TrimSpace(fmt.Sprintf(f, args...)), "component", "badger", "db", l.db)
}

func (l badgerLogger) Warningf(f string, args ...interface{}) {
	l.logger.Warn(strings.TrimSpace(fmt.Sprintf(f, args...)), "component", "badger", "db", l.db)
}

func (badgerLogger) Infof(string, ...interface{})  {}
func (badgerLogger) Debugf(string, ...interface{}) {}
