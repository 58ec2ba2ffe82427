package shapes

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Row is one row as text, column by column: each value is what
// PostgreSQL's output function prints for it (nil is NULL).
type Row []*string

// Column is a column of a shaped table, as electric-schema describes it.
type Column struct {
	Name    string
	Type    string // PostgreSQL type name: text, int4, int8, jsonb, timestamptz
	NotNull bool
}

// baseTable is a pullwake table the change feed copies and follows.
type baseTable struct {
	Name    string
	Columns []string // read in this order (Row indexes)
	PK      []int    // indexes into Columns of the primary key (tenant first)
	Tenant  int      // index of tenant_id
}

// table is a table as the shape API serves it: its columns, its primary
// key within the tenant, and how one of its rows derives from a row of its
// base table. The same derivation is the SQL view electric_<Name>
// (sql/shapes.sql); a test holds the two to each other.
type table struct {
	Name    string
	Base    string // "" = a table pullwake has no rows for (always empty)
	Columns []Column
	PK      []int // indexes into Columns
	// Map derives the shaped row from a base row (indexed as the base
	// table's Columns); false when the base row has no shaped row.
	Map func(base Row) (Row, bool)
}

func (t *table) col(name string) int {
	for i, c := range t.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// electricPrincipal is who owns every runner in Electric's terms: the
// admin, pullwake's only principal (the same URL its Electric dialect
// sends inbox messages from).
const electricPrincipal = "/principal/system%3Aadmin"

var baseTables = []baseTable{
	{Name: "entities", Columns: []string{"tenant_id", "url", "status", "runner_id", "created_at", "updated_at", "tags", "parent", "stop_signal"}, PK: []int{0, 1}},
	{Name: "entity_types", Columns: []string{"tenant_id", "name", "description", "creation_schema", "inbox_schemas", "state_schemas", "default_dispatch_policy", "created_at", "updated_at", "revision"}, PK: []int{0, 1}},
	{Name: "runners", Columns: []string{"tenant_id", "id", "label", "kind", "admin_status", "last_seen_at", "liveness_lease_expires_at", "diagnostics", "created_at", "updated_at", "wake_stream_read_seq"}, PK: []int{0, 1}},
	{Name: "entity_dispatch_state", Columns: dispatchColumns, PK: []int{0, 1}},
}

// dispatchColumns are entity_dispatch_state's columns the status page
// reads, served as they are (electric_entity_dispatch_state).
var dispatchColumns = []string{"tenant_id", "entity_url", "active_consumer_id", "active_epoch", "active_runner_id",
	"active_claimed_at", "active_lease_expires_at", "outstanding_wake_id", "acked_offset", "last_sent_offset",
	"last_released_at", "last_completed_at", "last_error", "updated_at"}

func str(s string) *string { return &s }

func cols(spec string) []Column {
	var out []Column
	for _, f := range strings.Fields(spec) {
		parts := strings.Split(f, ":")
		c := Column{Name: parts[0], Type: parts[1]}
		if len(parts) > 2 && parts[2] == "nn" {
			c.NotNull = true
		}
		out = append(out, c)
	}
	return out
}

// tables are the shaped tables, by name. Their columns are those
// Electric's agents server exposes through its shape proxy.
var tables = map[string]*table{
	"entities": {
		Name: "entities", Base: "entities", PK: []int{1},
		Columns: cols(`tenant_id:text:nn url:text:nn type:text:nn status:text:nn dispatch_policy:jsonb
			tags:jsonb:nn spawn_args:jsonb sandbox:jsonb parent:text created_by:text type_revision:int4
			inbox_schemas:jsonb state_schemas:jsonb created_at:int8:nn updated_at:int8:nn`),
		Map: mapEntity,
	},
	"entity_types": {
		Name: "entity_types", Base: "entity_types", PK: []int{1},
		Columns: cols(`tenant_id:text:nn name:text:nn description:text:nn creation_schema:jsonb inbox_schemas:jsonb
			state_schemas:jsonb slash_commands:jsonb serve_endpoint:text default_dispatch_policy:jsonb
			revision:int4:nn created_at:text:nn updated_at:text:nn`),
		Map: mapEntityType,
	},
	"runners": {
		Name: "runners", Base: "runners", PK: []int{1},
		Columns: cols(`tenant_id:text:nn id:text:nn owner_principal:text:nn label:text:nn kind:text:nn
			admin_status:text:nn wake_stream:text:nn sandbox_profiles:jsonb:nn created_at:timestamptz:nn
			updated_at:timestamptz:nn`),
		Map: mapRunner,
	},
	"runner_runtime_diagnostics": {
		Name: "runner_runtime_diagnostics", Base: "runners", PK: []int{1},
		Columns: cols(`tenant_id:text:nn runner_id:text:nn owner_principal:text:nn wake_stream_offset:text
			last_seen_at:timestamptz:nn liveness_lease_expires_at:timestamptz:nn diagnostics:jsonb
			updated_at:timestamptz:nn`),
		Map: mapRunnerDiagnostics,
	},
	"entity_dispatch_state": {
		Name: "entity_dispatch_state", Base: "entity_dispatch_state", PK: []int{1},
		Columns: cols(`tenant_id:text:nn entity_url:text:nn active_consumer_id:text active_epoch:int8
			active_runner_id:text active_claimed_at:timestamptz active_lease_expires_at:timestamptz
			outstanding_wake_id:text acked_offset:int8:nn last_sent_offset:int8:nn
			last_released_at:timestamptz last_completed_at:timestamptz last_error:text updated_at:timestamptz:nn`),
		Map: func(b Row) (Row, bool) { return b, true },
	},
	"users": {
		Name: "users", PK: []int{1},
		Columns: cols(`tenant_id:text:nn id:text:nn display_name:text email:text avatar_url:text
			created_at:timestamptz:nn updated_at:timestamptz:nn`),
	},
	"entity_effective_permissions": {
		Name: "entity_effective_permissions", PK: []int{1},
		Columns: cols(`tenant_id:text:nn id:int8:nn entity_url:text:nn source_entity_url:text:nn
			source_grant_id:int8:nn permission:text:nn subject_kind:text:nn subject_value:text:nn
			expires_at:timestamptz created_at:timestamptz:nn`),
	},
}

// TableNames lists the tables the shape API serves, sorted.
func TableNames() []string {
	return []string{"entities", "entity_dispatch_state", "entity_types", "entity_effective_permissions", "runner_runtime_diagnostics", "runners", "users"}
}

// pgTime parses a timestamptz as PostgreSQL prints it with DateStyle ISO
// and TimeZone UTC (the feed's sessions set both).
func pgTime(s string) (time.Time, error) {
	t, err := time.Parse("2006-01-02 15:04:05.999999-07", s)
	if err != nil {
		t, err = time.Parse("2006-01-02 15:04:05.999999-07:00", s)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamptz %q: %w", s, err)
	}
	return t, nil
}

// millis is a timestamptz as milliseconds since the epoch, truncated (the
// view: floor(extract(epoch from t) * 1000)).
func millis(v *string) *string {
	if v == nil {
		return nil
	}
	t, err := pgTime(*v)
	if err != nil {
		return nil
	}
	return str(strconv.FormatInt(t.UnixMilli(), 10))
}

// isoMillis is a timestamptz as ISO 8601 in UTC with milliseconds, as
// JavaScript's toISOString prints it (the view: to_char(... 'MS"Z"')).
func isoMillis(v *string) *string {
	if v == nil {
		return nil
	}
	t, err := pgTime(*v)
	if err != nil {
		return nil
	}
	return str(t.UTC().Format("2006-01-02T15:04:05.000Z"))
}

// jsonString quotes s as a JSON string the way jsonb prints one.
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// mapEntity: base entities (tenant_id url status runner_id created_at
// updated_at tags parent stop_signal).
func mapEntity(b Row) (Row, bool) {
	url := deref(b[1])
	typ := ""
	if parts := strings.SplitN(strings.TrimPrefix(url, "/"), "/", 2); len(parts) > 0 {
		typ = parts[0]
	}
	status := b[2]
	if deref(status) == "stopped" && deref(b[8]) == "SIGKILL" {
		status = str("killed")
	}
	var policy *string
	if b[3] != nil {
		policy = str(`{"targets": [{"type": "runner", "runnerId": ` + jsonString(*b[3]) + `}]}`)
	}
	return Row{
		b[0], b[1], str(typ), status, policy,
		b[6], str("{}"), nil, b[7], nil, nil,
		nil, nil, millis(b[4]), millis(b[5]),
	}, true
}

// mapEntityType: base entity_types (tenant_id name description
// creation_schema inbox_schemas state_schemas default_dispatch_policy
// created_at updated_at revision).
func mapEntityType(b Row) (Row, bool) {
	return Row{
		b[0], b[1], b[2], b[3], b[4],
		b[5], nil, nil, b[6],
		b[9], isoMillis(b[7]), isoMillis(b[8]),
	}, true
}

// mapRunner: base runners (tenant_id id label kind admin_status
// last_seen_at liveness_lease_expires_at diagnostics created_at
// updated_at wake_stream_read_seq).
func mapRunner(b Row) (Row, bool) {
	kind := b[3]
	if deref(kind) == "" {
		kind = str("local")
	}
	return Row{
		b[0], b[1], str(electricPrincipal), b[2], kind,
		b[4], str("/runners/" + deref(b[1]) + "/wake"), str("[]"), b[8],
		b[9],
	}, true
}

// mapRunnerDiagnostics: the runner's liveness and client diagnostics, once
// it has heartbeated.
func mapRunnerDiagnostics(b Row) (Row, bool) {
	if b[5] == nil || b[6] == nil {
		return nil, false
	}
	var off *string
	if b[10] != nil {
		if n, err := strconv.ParseInt(*b[10], 10, 64); err == nil {
			off = str(fmt.Sprintf("%016d", n))
		}
	}
	return Row{
		b[0], b[1], str(electricPrincipal), off,
		b[5], b[6], b[7], b[9],
	}, true
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
