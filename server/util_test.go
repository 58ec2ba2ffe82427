package server_test

import (
	"encoding/json"

	"github.com/pullwake/pullwake/server/tokens"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func tokensOwner(consumer string, epoch int64) tokens.Owner {
	return tokens.Owner{ConsumerID: consumer, Epoch: epoch}
}
