package s3gw

import (
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"syscall"
)

// S3 error codes the gateway returns.
const (
	codeAccessDenied           = "AccessDenied"
	codeBadDigest              = "BadDigest"
	codeBucketAlreadyOwned     = "BucketAlreadyOwnedByYou"
	codeBucketNotEmpty         = "BucketNotEmpty"
	codeEntityTooSmall         = "EntityTooSmall"
	codeEntityTooLarge         = "EntityTooLarge"
	codeIncompleteBody         = "IncompleteBody"
	codeInternalError          = "InternalError"
	codeInvalidAccessKeyID     = "InvalidAccessKeyId"
	codeInvalidArgument        = "InvalidArgument"
	codeInvalidBucketName      = "InvalidBucketName"
	codeInvalidDigest          = "InvalidDigest"
	codeInvalidPart            = "InvalidPart"
	codeInvalidPartOrder       = "InvalidPartOrder"
	codeInvalidRange           = "InvalidRange"
	codeInvalidRequest         = "InvalidRequest"
	codeKeyTooLong             = "KeyTooLongError"
	codeMalformedXML           = "MalformedXML"
	codeMethodNotAllowed       = "MethodNotAllowed"
	codeMissingContentLength   = "MissingContentLength"
	codeMissingSecurityHeader  = "MissingSecurityHeader"
	codeNoSuchBucket           = "NoSuchBucket"
	codeNoSuchKey              = "NoSuchKey"
	codeNoSuchUpload           = "NoSuchUpload"
	codeNotImplemented         = "NotImplemented"
	codePreconditionFailed     = "PreconditionFailed"
	codeRequestTimeTooSkewed   = "RequestTimeTooSkewed"
	codeSignatureDoesNotMatch  = "SignatureDoesNotMatch"
	codeAuthorizationMalformed = "AuthorizationHeaderMalformed"
	codeSHA256Mismatch         = "XAmzContentSHA256Mismatch"
	codeObjectConflict         = "ObjectConflict"
	codeSlowDown               = "SlowDown"
)

// statusOf returns the HTTP status of an S3 error code.
func statusOf(code string) int {
	switch code {
	case codeAccessDenied, codeInvalidAccessKeyID, codeSignatureDoesNotMatch, codeRequestTimeTooSkewed:
		return http.StatusForbidden
	case codeNoSuchBucket, codeNoSuchKey, codeNoSuchUpload:
		return http.StatusNotFound
	case codeBucketAlreadyOwned, codeBucketNotEmpty, codeObjectConflict:
		return http.StatusConflict
	case codePreconditionFailed:
		return http.StatusPreconditionFailed
	case codeInvalidRange:
		return http.StatusRequestedRangeNotSatisfiable
	case codeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case codeMissingContentLength:
		return http.StatusLengthRequired
	case codeNotImplemented:
		return http.StatusNotImplemented
	case codeInternalError:
		return http.StatusInternalServerError
	case codeSlowDown:
		return http.StatusServiceUnavailable
	default:
		return http.StatusBadRequest
	}
}

// apiError is an S3 error response.
type apiError struct {
	Code    string
	Message string
	// Resource is the bucket or key the error is about (optional).
	Resource string
	// Err is the underlying cause, logged but not sent.
	Err error
}

func (e *apiError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return e.Code + ": " + e.Message
}

func (e *apiError) Unwrap() error { return e.Err }

// s3err returns an S3 error with a message.
func s3err(code, format string, args ...any) *apiError {
	return &apiError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// errorBody is the XML body of an error.
type errorBody struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	Resource  string   `xml:"Resource,omitempty"`
	RequestID string   `xml:"RequestId"`
}

// asAPIError turns any error into an S3 error: an *apiError as is, file
// system errnos into their S3 meaning, anything else InternalError.
func asAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ENAMETOOLONG:
			return &apiError{Code: codeKeyTooLong, Message: "a key segment is longer than 255 bytes", Err: err}
		case syscall.ENOSPC, syscall.EDQUOT:
			return &apiError{Code: codeSlowDown, Message: "the store is out of space", Err: err}
		case syscall.ENOTDIR, syscall.EISDIR, syscall.EEXIST, syscall.ENOTEMPTY:
			return &apiError{Code: codeObjectConflict, Message: "the key conflicts with an existing object or prefix (a file cannot also be a directory)", Err: err}
		}
	}
	return &apiError{Code: codeInternalError, Message: "internal error", Err: err}
}
