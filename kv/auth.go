package kv

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/datenlord/datenlord-go/internal/clientauth"
)

// Authentication: with credentials, a client authenticates with an
// access key as user name and its secret as password (Auth.Authenticate)
// and gets a token that it sends in the "token" metadata of every call.
// Tokens are stateless: user, expiry and an HMAC-SHA256 over both, keyed
// by a hash of all the credentials, so every node with the same
// credentials file accepts them and changing the file invalidates them.

type authenticator struct {
	creds *clientauth.Credentials
	key   []byte
	ttl   time.Duration
}

func newAuthenticator(creds *clientauth.Credentials, ttl time.Duration) *authenticator {
	h := sha256.New()
	h.Write([]byte("datenlord kv token key\x00"))
	for _, k := range creds.AccessKeys() {
		s, _ := creds.Secret(k)
		h.Write([]byte(k + "\x00" + s + "\x00"))
	}
	return &authenticator{creds: creds, key: h.Sum(nil), ttl: ttl}
}

func (a *authenticator) sign(payload []byte) []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write(payload)
	return m.Sum(nil)
}

// token issues a token for user valid until now+ttl.
func (a *authenticator) token(user string, now time.Time) string {
	p := binary.BigEndian.AppendUint64(nil, uint64(now.Add(a.ttl).Unix()))
	p = append(p, user...)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(p) + "." + enc.EncodeToString(a.sign(p))
}

// check verifies a token and returns its user.
func (a *authenticator) check(tok string, now time.Time) (string, error) {
	enc := base64.RawURLEncoding
	ps, ms, ok := strings.Cut(tok, ".")
	if !ok {
		return "", rpctypes.ErrGRPCInvalidAuthToken
	}
	p, err1 := enc.DecodeString(ps)
	mac, err2 := enc.DecodeString(ms)
	if err1 != nil || err2 != nil || len(p) < 8 || !hmac.Equal(mac, a.sign(p)) {
		return "", rpctypes.ErrGRPCInvalidAuthToken
	}
	if now.Unix() > int64(binary.BigEndian.Uint64(p)) {
		return "", rpctypes.ErrGRPCInvalidAuthToken
	}
	user := string(p[8:])
	if _, ok := a.creds.Secret(user); !ok {
		return "", rpctypes.ErrGRPCUserNotFound
	}
	return user, nil
}

// authorize checks the token of a call (nil without credentials).
func (s *Server) authorize(ctx context.Context, method string) error {
	if s.auth == nil || method == "/etcdserverpb.Auth/Authenticate" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	toks := md.Get(rpctypes.TokenFieldNameGRPC)
	if len(toks) == 0 {
		return rpctypes.ErrGRPCUserEmpty
	}
	_, err := s.auth.check(toks[0], time.Now())
	return err
}

type authServer struct {
	pb.UnimplementedAuthServer
	s *Server
}

// Authenticate checks an access key and secret and returns a token.
func (a *authServer) Authenticate(ctx context.Context, req *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	au := a.s.auth
	if au == nil {
		return nil, rpctypes.ErrGRPCAuthNotEnabled
	}
	secret, ok := au.creds.Secret(req.Name)
	if !ok || subtle.ConstantTimeCompare([]byte(secret), []byte(req.Password)) != 1 {
		return nil, rpctypes.ErrGRPCAuthFailed
	}
	return &pb.AuthenticateResponse{Header: a.s.header(0), Token: au.token(req.Name, time.Now())}, nil
}

// AuthStatus reports whether authentication is on.
func (a *authServer) AuthStatus(ctx context.Context, _ *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	return &pb.AuthStatusResponse{Header: a.s.header(0), Enabled: a.s.auth != nil}, nil
}

var _ grpc.UnaryServerInterceptor = (*Server)(nil).unaryInterceptor
