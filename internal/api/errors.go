package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"unicode"
	"unicode/utf8"

	"github.com/warden-iot/warden/internal/apierror"
	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// Error codes, one per HTTP status the API answers with (docs/openapi.yaml);
// those onboarding's POST /v1/claims answers too come from apierror.
const (
	codeInvalid          = apierror.CodeInvalid      // 400
	codeUnauthorized     = apierror.CodeUnauthorized // 401
	codeForbidden        = apierror.CodeForbidden    // 403
	codeNotFound         = apierror.CodeNotFound     // 404
	codeMethodNotAllowed = "method_not_allowed"      // 405
	codeConflict         = "conflict"                // 409
	codeTooLarge         = "too_large"               // 413
	codeUnsupportedType  = "unsupported_media_type"  // 415
	codeRefused          = "refused"                 // 422
	codeRateLimited      = "rate_limited"            // 429
	codeInternal         = apierror.CodeInternal     // 500
)

// httpError is an error that knows its answer.
type httpError struct {
	status int
	code   string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func invalidf(format string, args ...any) error {
	return &httpError{status: http.StatusBadRequest, code: codeInvalid, msg: fmt.Sprintf(format, args...)}
}

// notFoundError is the not-found of a resource the caller may not see.
type notFoundError struct{}

func (notFoundError) Error() string        { return "not found" }
func (notFoundError) Is(target error) bool { return target == store.ErrNotFound }

// classify maps an error to its answer, by the same error kinds the admin
// socket uses. A server failure's text stays in the log: it may name
// files, and says nothing the caller can act on.
func classify(err error) httpError {
	var he *httpError
	switch {
	case errors.As(err, &he):
		return *he
	case errors.Is(err, store.ErrNotFound), errors.Is(err, pki.ErrUnknownIssuer):
		return httpError{http.StatusNotFound, codeNotFound, err.Error()}
	case errors.Is(err, store.ErrConflict):
		return httpError{http.StatusConflict, codeConflict, err.Error()}
	case errors.Is(err, registry.ErrInvalid):
		return httpError{http.StatusBadRequest, codeInvalid, err.Error()}
	case errors.Is(err, ota.ErrRefused), errors.Is(err, pki.ErrNoRootKey):
		return httpError{http.StatusUnprocessableEntity, codeRefused, err.Error()}
	}
	return httpError{http.StatusInternalServerError, codeInternal, "internal error; the server log has the details"}
}

// readJSON decodes the request body into v, strictly: a JSON object of
// at most MaxBody bytes with no unknown fields and nothing after it, sent
// as application/json. An empty body leaves v alone if optional, and is
// refused otherwise.
func readJSON(r *http.Request, v any, optional bool) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		return invalidf("cannot read the request body: %v", err)
	}
	if len(body) > MaxBody {
		return &httpError{http.StatusRequestEntityTooLarge, codeTooLarge, fmt.Sprintf("the request body is larger than %d bytes", MaxBody)}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if optional {
			return nil
		}
		return invalidf("this request needs a JSON body")
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return &httpError{http.StatusUnsupportedMediaType, codeUnsupportedType, "the request body must be sent as Content-Type: application/json"}
	}
	if body = bytes.TrimSpace(body); body[0] != '{' {
		return invalidf("the request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalidf("request body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalidf("request body: data after the JSON object")
	}
	return nil
}

// checkReason accepts what the registry accepts as a reason: valid UTF-8
// without control characters, at most registry.MaxReasonLen bytes. It
// goes to the audit log even where the service keeps none.
func checkReason(s string) error {
	if len(s) > registry.MaxReasonLen {
		return invalidf("reason is %d bytes; at most %d are allowed", len(s), registry.MaxReasonLen)
	}
	if !utf8.ValidString(s) {
		return invalidf("reason is not valid UTF-8")
	}
	for _, c := range s {
		if unicode.IsControl(c) {
			return invalidf("reason contains the control character %U", c)
		}
	}
	return nil
}
