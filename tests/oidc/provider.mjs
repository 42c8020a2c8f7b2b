// A real OpenID provider (node `oidc-provider` 8.8.1, pinned in
// package-lock.json: the last major line that supports Node.js 20) for
// tests/oidc_provider.rs. Test use only: dev interactions (any login, any
// password), in-memory storage, a key made at start, plain HTTP on loopback.
//
// Outgoing requests (back-channel logouts to the authority on 127.0.0.1):
// 8.x sends them with `got` through node's global agents and has no guard
// against special-use addresses, so loopback needs no setting. 9.x (Node.js
// 22+) refuses loopback by default: it passes an undici `dispatcher` that
// destroys such connections to its `fetch` option (docs/README.md "fetch"),
// and a `fetch: (url, { dispatcher, ...options }) => globalThis.fetch(url,
// options)` turns that off. Upgrading needs that, and `httpOptions` gone.
//
// Protocol with the test, one JSON object per line:
//   1. it listens on 127.0.0.1:0 and prints {"message":"listening","issuer":...}
//   2. it reads its configuration from stdin (one line):
//        {"resource": "https://api.test", "scope": "api:read",
//         "sid_in_access_tokens": true,
//         "ca_file": "/path/to/ca.crt.pem",
//         "clients": [ ...client metadata, e.g. backchannel_logout_uri... ]}
//      (after step 1, so the test knows the issuer, with its ephemeral port,
//      before it picks the authority's address for backchannel_logout_uri)
//      ca_file (optional): a PEM CA certificate the provider's own https
//      requests trust as well as node's usual ones (back-channel logouts to
//      an https URI on loopback served with tests/fixtures/server.crt.pem).
//      Client redirect_uris, post_logout_redirect_uris and
//      backchannel_logout_uri may be http or https (web clients of the code
//      flow); ID tokens carry `sid` for clients with backchannel_logout_uri
//      and backchannel_logout_session_required: true.
//   3. it prints {"message":"ready"} and serves; requests that arrive before
//      that wait for it
//   4. it prints every back-channel logout it sends, and every server error:
//        {"message":"backchannel.success","client_id":...,"sub":...,"sid":...}
//        {"message":"backchannel.error","client_id":...,"error":...}
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as tls from 'node:tls';
import * as readline from 'node:readline';

import Provider, { errors } from 'oidc-provider';

const say = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

let serve;
const ready = new Promise((resolve) => { serve = resolve; });
const server = http.createServer(async (req, res) => (await ready)(req, res));
server.listen(0, '127.0.0.1');
await new Promise((resolve) => { server.once('listening', resolve); });
const issuer = `http://127.0.0.1:${server.address().port}`;
say({ message: 'listening', issuer });

const lines = readline.createInterface({ input: process.stdin });
const first = await new Promise((resolve, reject) => {
  lines.once('line', resolve);
  lines.once('close', () => reject(new Error('stdin closed before the configuration')));
});
const config = JSON.parse(first);

// The test ends the provider by closing stdin (or killing it).
lines.on('close', () => process.exit(0));

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = {
  ...privateKey.export({ format: 'jwk' }), kid: 'oidc-test-rs256', use: 'sig', alg: 'RS256',
};

// With ca_file, https requests trust it besides node's default roots.
const httpsAgent = config.ca_file
  ? new https.Agent({ ca: [...tls.rootCertificates, fs.readFileSync(config.ca_file, 'utf8')] })
  : undefined;

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: { keys: [jwk] },
  // Any login is an account whose subject is the login name.
  findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== config.resource) {
          throw new errors.InvalidTarget();
        }
        // RFC 9068 JWT access tokens (header typ: at+jwt) for the resource.
        return {
          scope: config.scope,
          audience: config.resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 600,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // oidc-provider puts `sid` in ID and logout tokens only; with
  // sid_in_access_tokens the access tokens of a login carry it too.
  extraTokenClaims: (ctx, token) => (config.sid_in_access_tokens && token.sid
    ? { sid: token.sid }
    : undefined),
  // The authority answers on loopback at once; a generous timeout all the
  // same, for a loaded test machine (the default is 2.5 s).
  httpOptions: (url) => ({
    signal: AbortSignal.timeout(10000),
    ...(httpsAgent && url.protocol === 'https:' ? { agent: httpsAgent } : undefined),
  }),
});

provider.on('backchannel.success', (ctx, client, sub, sid) => {
  say({
    message: 'backchannel.success', client_id: client.clientId, sub, sid,
  });
});
provider.on('backchannel.error', (ctx, err, client, sub, sid) => {
  say({
    message: 'backchannel.error', client_id: client.clientId, sub, sid, error: String(err),
  });
});
provider.on('server_error', (ctx, err) => {
  say({ message: 'server_error', error: String(err?.stack ?? err) });
});

serve(provider.callback());
say({ message: 'ready' });
