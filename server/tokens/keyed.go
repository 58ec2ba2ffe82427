package tokens

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"
)

// A write token reads
//
//	pw1.<consumer id, base64url>.<epoch>.<secret>.<tag>
//
// secret is WriteSecret(claim token), whose SHA-256 the claim row keeps
// (consumer_claims.write_token_hash, written by pw_claim_wake with the SQL
// function pw_write_secret); tag is the HMAC-SHA256, under the store's
// key, of the rest and of the stream path the token writes to (base64url,
// 256 bits). Parse checks the tag in memory, so a token nobody minted, or
// one minted for another stream, costs no query; the caller then checks
// the named claim by primary key.
const tokenPrefix = "pw1."

// WriteSecret is the secret part of the write token of the claim whose
// claim token is claimToken: the hex SHA-256 of "write:" and the claim
// token (pw_write_secret in SQL computes the same).
func WriteSecret(claimToken string) string {
	sum := sha256.Sum256([]byte("write:" + claimToken))
	return hex.EncodeToString(sum[:])
}

// SecretHash is what the claim row stores of a write secret.
func SecretHash(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

func randomKey() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("tokens: no randomness: " + err.Error())
	}
	return k
}

func (s *Store) tag(path, body string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(path))
	m.Write([]byte{0})
	m.Write([]byte(body))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *Store) format(path string, owner Owner, secret string) string {
	body := tokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(owner.ConsumerID)) + "." +
		strconv.FormatInt(owner.Epoch, 10) + "." + secret
	return body + "." + s.tag(path, body)
}

// Parse returns the claim a write token for path names, and its secret,
// when the token carries this store's signature for that path; ok is false
// for anything else (no query is worth making for it).
func (s *Store) Parse(path, token string) (owner Owner, secret string, ok bool) {
	if !strings.HasPrefix(token, tokenPrefix) || len(token) > 512 {
		return Owner{}, "", false
	}
	i := strings.LastIndexByte(token, '.')
	body, tag := token[:i], token[i+1:]
	if !hmac.Equal([]byte(tag), []byte(s.tag(path, body))) {
		return Owner{}, "", false
	}
	parts := strings.Split(body[len(tokenPrefix):], ".")
	if len(parts) != 3 {
		return Owner{}, "", false
	}
	consumer, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return Owner{}, "", false
	}
	epoch, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return Owner{}, "", false
	}
	return Owner{ConsumerID: string(consumer), Epoch: epoch}, parts[2], true
}
