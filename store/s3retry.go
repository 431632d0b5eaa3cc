package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Back-off between attempts: full jitter, a random wait in
// [0, min(s3MaxBackoff, s3BaseBackoff<<(attempt-1))). With the default five
// attempts a request gives up after at most 0.2+0.4+0.8+1.6 = 3s of
// waiting plus the attempts themselves.
const (
	s3BaseBackoff = 200 * time.Millisecond
	s3MaxBackoff  = 10 * time.Second
)

// errTruncated marks a response body that ended before its announced
// length (a dropped connection); the request is retried.
var errTruncated = errors.New("response body truncated")

// acquire takes a request slot, waiting for one as long as ctx allows.
func (s *S3Store) acquire(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	default:
	}
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for a request slot (%d in flight): %w", cap(s.sem), ctx.Err())
	}
}

func (s *S3Store) release() { <-s.sem }

// do runs one S3 request: attempt is called until it succeeds, fails
// with an error that is not worth retrying, or the store's attempts are
// used up. Each call holds one of the store's request slots (not while
// backing off) and runs under its own timeout, so a dead server fails
// within about attempts × timeout. attempt must be idempotent. metricOp
// labels the retries counter; api and key name the request in errors.
func (s *S3Store) do(ctx context.Context, metricOp, api, key string, attempt func(ctx context.Context) error) error {
	what := api + " s3://" + s.cfg.bucket + "/" + key
	for n := 1; ; n++ {
		if err := s.acquire(ctx); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		actx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
		err := attempt(actx)
		timedOut := err != nil && ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded)
		cancel()
		s.release()
		if err == nil {
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%s: %w (attempt %d: %v)", what, cerr, n, err)
		}
		if timedOut {
			err = fmt.Errorf("attempt timed out after %s: %w", s.cfg.timeout, err)
		} else if !retryable(err) {
			return fmt.Errorf("%s: %w", what, err)
		}
		if n >= s.cfg.attempts {
			return fmt.Errorf("%s: gave up after %d attempts: %w", what, n, err)
		}
		wait := backoff(n)
		s.retried(metricOp)
		s.log.Debug("retrying S3 request", "api", api, "key", key, "attempt", n, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w while backing off after attempt %d: %v", what, ctx.Err(), n, err)
		}
	}
}

// backoff returns the wait before attempt n+1 (n >= 1): full jitter.
func backoff(n int) time.Duration {
	ceil := s3MaxBackoff
	if n < 16 {
		ceil = min(s3MaxBackoff, s3BaseBackoff<<(n-1))
	}
	return rand.N(ceil) + time.Millisecond
}

// retryable reports whether a failed request may succeed if tried again:
// server errors (5xx), throttling (503 SlowDown, 429), request timeouts,
// connection failures and truncated responses. Client errors (4xx), a
// missing key and credential problems are final.
func retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if strings.Contains(err.Error(), "failed to retrieve credentials") {
		return false // no credentials: the next attempt finds none either
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
			"RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
			"RequestLimitExceeded", "BandwidthLimitExceeded", "ProvisionedThroughputExceededException",
			"RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
			"PriorRequestNotComplete":
			return true
		}
	}
	if code := httpStatus(err); code >= 500 || code == 429 || code == 408 {
		return true
	}
	var sendErr *smithyhttp.RequestSendError
	if errors.As(err, &sendErr) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	return errors.Is(err, errTruncated) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, context.DeadlineExceeded)
}

// httpStatus returns the HTTP status of a failed request, or 0.
func httpStatus(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// errorCode returns the S3 error code of a failed request, or "".
func errorCode(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode()
	}
	return ""
}

// isNoSuchKey reports whether err says the object does not exist (GET's
// NoSuchKey, or HEAD's bodiless 404).
func isNoSuchKey(err error) bool {
	switch errorCode(err) {
	case "NoSuchKey", "NotFound":
		return true
	case "NoSuchBucket":
		return false
	}
	return httpStatus(err) == 404 && errorCode(err) == ""
}

// isInvalidRange reports whether err is S3's answer to a range that
// starts at or after the end of the object.
func isInvalidRange(err error) bool {
	return errorCode(err) == "InvalidRange" || httpStatus(err) == 416
}

// isUnreachable reports whether err means the endpoint could not be
// talked to at all (refused, unresolvable, timed out).
func isUnreachable(err error) bool {
	if httpStatus(err) != 0 {
		return false
	}
	var sendErr *smithyhttp.RequestSendError
	var netErr net.Error
	return errors.As(err, &sendErr) || errors.As(err, &netErr) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, context.DeadlineExceeded)
}
