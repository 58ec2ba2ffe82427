// Package clienttest holds the tests of pullwake's shapes through real
// clients, against `pullwake serve` run as a process on a database with
// logical decoding:
//
//   - TestShapeClient runs Electric's TypeScript client
//     (@electric-sql/client, test/shapeclient) over every shape while it
//     changes rows through the REST API, restarting the server once to
//     force a must-refetch;
//   - TestStatusPageBrowser opens the status page (/status/) in headless
//     Chromium (Debian's, through playwright-core, test/statuspage) and
//     watches an entity's status change on it without a reload;
//   - TestShapeFollower runs the page's own follower (shape.js) against
//     scripted answers of the protocol, with node's test runner.
//
// The Node projects are installed and run by internal/nodetest; a missing
// node, npm or Chromium is installed with apt-get or fails the test, never
// skips it.
package clienttest
