// Package apierror writes the error answers of Warden's HTTP API (/v1/...)
// for the handlers that live outside internal/api (onboarding's POST
// /v1/claims): {"error": {"code": ..., "message": ...}}, the code stable,
// the message for people (docs/openapi.yaml).
package apierror

import (
	"encoding/json"
	"net/http"
)

// Codes of the error answers (internal/api uses the same).
const (
	CodeInvalid      = "invalid"      // 400
	CodeUnauthorized = "unauthorized" // 401
	CodeForbidden    = "forbidden"    // 403
	CodeNotFound     = "not_found"    // 404
	CodeInternal     = "internal"     // 500
)

// UnauthorizedBody is the one answer to every request without a valid API
// token, whatever was wrong with it, byte for byte: a caller never learns
// whether its token was unknown, expired or revoked.
var UnauthorizedBody = []byte(`{"error":{"code":"unauthorized","message":"a valid API token is required"}}` + "\n")

type body struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// Write answers status with the error code and message.
func Write(w http.ResponseWriter, status int, code, message string) {
	var b body
	b.Error.Code, b.Error.Message = code, message
	out, _ := json.Marshal(b) // two strings: cannot fail
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(out, '\n'))
}

// WriteUnauthorized answers 401 with UnauthorizedBody and the bearer
// challenge.
func WriteUnauthorized(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("WWW-Authenticate", `Bearer realm="warden"`)
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write(UnauthorizedBody)
}
