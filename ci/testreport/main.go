// Command testreport reads `go test -json` on standard input and prints
// what `go test` prints without -v (the "ok"/"FAIL" line of each package
// and the output of failing tests), followed by every skipped test with its
// reason. Skips not listed in the allow file (-allow) are errors when
// -strict is set: what CI runs must not skip silently.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	allowPath := flag.String("allow", "", "file listing allowed skips, one 'Test/Sub  reason' per line")
	strict := flag.Bool("strict", false, "fail on a skip that the allow file does not list")
	flag.Parse()
	allowed, err := readAllowed(*allowPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	code, err := report(os.Stdin, os.Stdout, allowed, *strict)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

func readAllowed(path string) (map[string]bool, error) {
	allowed := map[string]bool{}
	if path == "" {
		return allowed, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read allowed skips: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		allowed[strings.Fields(line)[0]] = true
	}
	return allowed, nil
}

// report renders the events and returns the exit code: 1 if a package or
// test failed or (strict) a skip was not allowed.
func report(r io.Reader, w io.Writer, allowed map[string]bool, strict bool) (int, error) {
	output := map[string][]string{} // package/test -> its output lines
	type skip struct{ name, reason string }
	var skips []skip
	var passed, failed int
	code := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			// Build errors and other non-JSON lines pass through.
			fmt.Fprintln(w, string(line))
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "build-output":
			fmt.Fprint(w, e.Output)
		case "build-fail":
			code = 1
		case "output":
			output[key] = append(output[key], e.Output)
		case "fail":
			code = 1
			if e.Test != "" {
				failed++
				for _, l := range output[key] {
					fmt.Fprint(w, l)
				}
			} else {
				for _, l := range output[key] {
					if !strings.HasPrefix(l, "=== ") {
						fmt.Fprint(w, l)
					}
				}
			}
			delete(output, key)
		case "skip":
			if e.Test == "" {
				// A package with no tests, or skipped whole.
				fmt.Fprintf(w, "?   \t%s\t[no test files]\n", e.Package)
			} else {
				reason := ""
				for _, l := range output[key] {
					if i := strings.Index(l, "SKIP"); i >= 0 && reason == "" {
						reason = strings.TrimSpace(l[i:])
					}
				}
				if reason == "" {
					for _, l := range output[key] {
						if t := strings.TrimSpace(l); !strings.HasPrefix(t, "===") && !strings.HasPrefix(t, "---") && t != "" {
							reason = t
							break
						}
					}
				}
				skips = append(skips, skip{e.Test, reason})
			}
			delete(output, key)
		case "pass":
			if e.Test != "" {
				passed++
			}
			if e.Test == "" {
				fmt.Fprintf(w, "ok  \t%s\t%.3fs\n", e.Package, e.Elapsed)
			}
			delete(output, key)
		}
	}
	if err := sc.Err(); err != nil {
		return 2, fmt.Errorf("read go test -json: %w", err)
	}
	if len(skips) > 0 {
		sort.Slice(skips, func(i, j int) bool { return skips[i].name < skips[j].name })
		fmt.Fprintf(w, "skipped tests (%d):\n", len(skips))
		for _, s := range skips {
			mark := "allowed"
			if !allowed[s.name] {
				mark = "NOT ALLOWED"
				if strict {
					code = 1
				}
			}
			fmt.Fprintf(w, "  %s [%s]: %s\n", s.name, mark, s.reason)
		}
	}
	fmt.Fprintf(w, "tests: %d passed, %d failed, %d skipped\n", passed, failed, len(skips))
	return code, nil
}
