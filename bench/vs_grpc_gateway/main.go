// Command poly-go-gateway is the Go grpc-gateway (v1.6.4) anchor for bench/vs_grpc_gateway:
// the stock generated reverse proxy for poly.auth.v1.AuthService, in front of one auth
// process over mTLS, with the gateway component's development certificate. Built by
// bench/vs_grpc_gateway/build_go_gateway.py (GOPATH mode, Debian packages); not part of the product.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	authv1 "polyanchor/poly_auth_v1"
)

func transportCredentials(caFile, certFile, keyFile, serverName string) (credentials.TransportCredentials, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	ca, err := ioutil.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, errors.New("no CA certificate in " + caFile)
	}
	return credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      roots,
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS12,
	}), nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "HTTP address to serve on")
	backend := flag.String("backend", "127.0.0.1:50051", "auth service gRPC address")
	serverName := flag.String("server-name", "localhost", "name the backend's certificate must prove")
	caFile := flag.String("ca", "", "CA certificate (PEM)")
	certFile := flag.String("cert", "", "this gateway's client certificate (PEM)")
	keyFile := flag.String("key", "", "this gateway's private key (PEM)")
	flag.Parse()
	if *caFile == "" || *certFile == "" || *keyFile == "" {
		log.Fatal("-ca, -cert and -key are required")
	}

	creds, err := transportCredentials(*caFile, *certFile, *keyFile, *serverName)
	if err != nil {
		log.Fatalf("credentials: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	mux := runtime.NewServeMux(
		// lowerCamel names and unpopulated fields emitted: what the Python edge writes.
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{OrigName: false, EmitDefaults: true}),
		// v1.6.4's default error writer panics with golang/protobuf 1.5.2.
		runtime.WithProtoErrorHandler(runtime.DefaultHTTPProtoErrorHandler),
	)
	dial := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if err := authv1.RegisterAuthServiceHandlerFromEndpoint(ctx, mux, *backend, dial); err != nil {
		log.Fatalf("register: %v", err)
	}

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		shutdown, done := context.WithTimeout(context.Background(), 2*time.Second)
		defer done()
		_ = server.Shutdown(shutdown)
	}()
	log.Printf("serving %s -> %s", listener.Addr(), *backend)
	if err := server.Serve(listener); err != nil && err != http.ErrServerClosed {
		log.Fatalf("serve: %v", err)
	}
}
