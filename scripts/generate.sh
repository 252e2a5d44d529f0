#!/usr/bin/env bash
# Regenerates every committed generated file. Run through `make generate`.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v protoc >/dev/null || { echo "generate: protoc missing (apt-get install protobuf-compiler)" >&2; exit 1; }
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bin/protoc-gen-connect-go" connectrpc.com/connect/cmd/protoc-gen-connect-go

rm -rf gen
mkdir -p gen
protoc -I proto -I /usr/include \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" --plugin=protoc-gen-connect-go="$bin/protoc-gen-connect-go" \
  --go_out=gen --go_opt=module=github.com/capsulehq/capsule/gen \
  --connect-go_out=gen --connect-go_opt=module=github.com/capsulehq/capsule/gen \
  $(cd proto && find . -name "*.proto" | sed "s,^\./,proto/," | sort)
gofmt -l gen

# sqlc: db/queries over the schema in db/migrations -> internal/store/db
# (sqlc.yaml). Pinned; built once into Go's cache (it needs cgo: gcc).
SQLC_VERSION=v1.31.1
rm -rf internal/store/db
go run "github.com/sqlc-dev/sqlc/cmd/sqlc@$SQLC_VERSION" generate
gofmt -l internal/store/db

# oapi-codegen: the Go SDK's wire layer from the OpenAPI document (pinned
# in go.mod's tool block).
(cd sdk/go/capsule/internal/wire && go tool oapi-codegen -config oapi-codegen.yaml ../../../../../internal/api/openapi.yaml)
gofmt -l sdk/go/capsule/internal/wire
