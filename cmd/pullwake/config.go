package main

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// dbFlags are the database settings every command that talks to PostgreSQL shares.
type dbFlags struct {
	url    string
	tenant string
}

func (d *dbFlags) register(fs *flag.FlagSet) { d.registerEnv(fs, os.Getenv) }

func (d *dbFlags) registerEnv(fs *flag.FlagSet, getenv func(string) string) {
	fs.StringVar(&d.url, "database-url", cmp.Or(getenv("PULLWAKE_DATABASE_URL"), getenv("DATABASE_URL")),
		"PostgreSQL connection string (env PULLWAKE_DATABASE_URL or DATABASE_URL)")
	fs.StringVar(&d.tenant, "tenant", cmp.Or(getenv("PULLWAKE_TENANT"), "default"), "tenant served (env PULLWAKE_TENANT)")
}

func (d *dbFlags) check() error {
	if d.url == "" {
		return fmt.Errorf("%w: no database: set --database-url, PULLWAKE_DATABASE_URL or DATABASE_URL", errUsage)
	}
	if d.tenant == "" {
		return fmt.Errorf("%w: --tenant must not be empty", errUsage)
	}
	return nil
}

// envDefaults reads typed flag defaults from the environment. A malformed
// value is remembered, not replaced by the default: check reports it after
// the flags are parsed, unless the flag itself was given (the flag wins).
type envDefaults struct {
	getenv func(string) string
	bad    map[string]error // flag name -> what is wrong with its variable
}

func newEnvDefaults(getenv func(string) string) *envDefaults {
	return &envDefaults{getenv: getenv, bad: map[string]error{}}
}

func (e *envDefaults) duration(flagName, name string, def time.Duration) time.Duration {
	return envValue(e, flagName, name, def, time.ParseDuration, "a duration (like 30s or 1m30s)")
}

func (e *envDefaults) bool(flagName, name string, def bool) bool {
	return envValue(e, flagName, name, def, strconv.ParseBool, "a boolean (true or false)")
}

func (e *envDefaults) int(flagName, name string, def int) int {
	return envValue(e, flagName, name, def, strconv.Atoi, "an integer")
}

// envValue reads variable name with parse, or def when it is unset; a
// malformed value is recorded against flagName (reported by check) and
// def is used meanwhile.
func envValue[T any](e *envDefaults, flagName, name string, def T, parse func(string) (T, error), want string) T {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	x, err := parse(v)
	if err != nil {
		e.bad[flagName] = fmt.Errorf("%s=%q is not %s", name, v, want)
		return def
	}
	return x
}

// check reports the malformed variables whose flag was not given.
func (e *envDefaults) check(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var msgs []string
	for name, err := range e.bad {
		if !set[name] {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	sort.Strings(msgs)
	return fmt.Errorf("%w: %s", errUsage, strings.Join(msgs, "; "))
}

// adminTokenMinBits is the least entropy an admin token may carry.
const adminTokenMinBits = 128

// checkAdminToken refuses an admin token that is guessable. The rule, by
// the characters the token is made of (it counts what a random token of
// that alphabet would carry):
//   - hex digits only: 4 bits a character, so at least 32 characters;
//   - anything else (base64, base64url, ...): 6 bits a character, so at
//     least 22 characters;
//   - only printable ASCII without spaces (it travels in a header), and at
//     least 8 distinct characters (no "aaaa...", "abab...").
//
// `openssl rand -hex 32` or `openssl rand -base64 32` make good ones.
func checkAdminToken(tok string) error {
	distinct := map[rune]bool{}
	hexOnly := true
	for _, r := range tok {
		if r < 0x21 || r > 0x7e {
			return fmt.Errorf("admin token has a space, control or non-ASCII character: it travels in an Authorization header")
		}
		distinct[r] = true
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			hexOnly = false
		}
	}
	bitsPer, kind, need := 6, "non-hex", (adminTokenMinBits+5)/6
	if hexOnly {
		bitsPer, kind, need = 4, "hex", adminTokenMinBits/4
	}
	if len(tok)*bitsPer < adminTokenMinBits {
		return fmt.Errorf("admin token too short: %d %s characters carry at most %d bits, %d are required (at least %d %s characters); make one with `openssl rand -hex 32`",
			len(tok), kind, len(tok)*bitsPer, adminTokenMinBits, need, kind)
	}
	if len(distinct) < 8 {
		return fmt.Errorf("admin token too repetitive: %d distinct characters, at least 8 are required; make one with `openssl rand -hex 32`", len(distinct))
	}
	return nil
}

// readTokenFile reads a token from path: the whole file, surrounding
// whitespace (a trailing newline) removed.
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read admin token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("admin token file %s is empty", path)
	}
	return tok, nil
}

func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: pullwake %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseArgs parses flags wherever they stand among the positional
// arguments (`migrate up --database-url X` and `migrate --database-url X up`
// both work) and returns the positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
