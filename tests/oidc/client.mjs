// The OAuth client side of tests/oidc_provider.rs, over plain HTTP with
// `fetch` and a cookie jar (no browser): what a relying party and its
// user's browser do at provider.mjs.
//
//   node client.mjs client-credentials '{"issuer", "client_id", "client_secret", "resource", "scope"}'
//   node client.mjs login  '{"issuer", "client_id", "client_secret", "redirect_uri", "resource", "scope", "user", "jar"}'
//   node client.mjs logout '{"issuer", "client_id", "id_token", "jar"}'
//
// Each prints one JSON line: the token endpoint's answer (client-credentials,
// login) or {"logged_out": true} (logout), and exits non-zero with the
// reason on stderr when a step goes wrong. `jar` is a file holding the
// browser's cookies between login and logout.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

const [command, json] = process.argv.slice(2);
const args = JSON.parse(json ?? '{}');

function fail(message) {
  process.stderr.write(`client.mjs ${command}: ${message}\n`);
  process.exit(1);
}

async function discover() {
  const res = await fetch(`${args.issuer}/.well-known/openid-configuration`);
  if (res.status !== 200) fail(`discovery answered ${res.status}`);
  return res.json();
}

const basic = () => `Basic ${Buffer.from(
  `${encodeURIComponent(args.client_id)}:${encodeURIComponent(args.client_secret)}`,
).toString('base64')}`;

async function token(meta, form) {
  const res = await fetch(meta.token_endpoint, {
    method: 'POST',
    headers: { authorization: basic(), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
  });
  const body = await res.json();
  if (res.status !== 200) fail(`token endpoint answered ${res.status}: ${JSON.stringify(body)}`);
  return body;
}

// A browser: cookies by name (the provider's cookies never share a name
// across paths that matter here), redirects followed by hand.
const jar = new Map(args.jar && fs.existsSync(args.jar)
  ? Object.entries(JSON.parse(fs.readFileSync(args.jar, 'utf8')))
  : []);

async function browse(url, init = {}) {
  const headers = new Headers(init.headers);
  if (jar.size) headers.set('cookie', [...jar].map(([k, v]) => `${k}=${v}`).join('; '));
  const res = await fetch(url, { ...init, headers, redirect: 'manual' });
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';');
    const at = pair.indexOf('=');
    const name = pair.slice(0, at).trim();
    const value = pair.slice(at + 1).trim();
    const expired = attrs.some((a) => /^\s*expires=.*1970/i.test(a) || /^\s*max-age=0\s*$/i.test(a));
    if (expired || value === '') jar.delete(name); else jar.set(name, value);
  }
  if (args.jar) fs.writeFileSync(args.jar, JSON.stringify(Object.fromEntries(jar)));
  return res;
}

const post = (url, form) => browse(url, {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams(form),
});

const location = (res, base) => {
  const to = res.headers.get('location');
  if (!to) fail(`expected a redirect from ${base}, got ${res.status}`);
  return new URL(to, base).href;
};

async function login() {
  const meta = await discover();
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = crypto.randomBytes(8).toString('hex');
  const auth = new URL(meta.authorization_endpoint);
  auth.search = new URLSearchParams({
    client_id: args.client_id,
    response_type: 'code',
    redirect_uri: args.redirect_uri,
    scope: args.scope,
    resource: args.resource,
    state,
    nonce: crypto.randomBytes(8).toString('hex'),
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }).toString();

  let url = auth.href;
  for (let step = 0; step < 20; step += 1) {
    if (url.startsWith(args.redirect_uri)) {
      const answer = new URL(url).searchParams;
      if (answer.get('error')) fail(`authorization error: ${answer.get('error')}: ${answer.get('error_description')}`);
      if (answer.get('state') !== state) fail('state mismatch');
      return token(meta, {
        grant_type: 'authorization_code',
        code: answer.get('code'),
        redirect_uri: args.redirect_uri,
        code_verifier: verifier,
        resource: args.resource,
      });
    }
    const res = await browse(url);
    if (res.status >= 300 && res.status < 400) {
      url = location(res, url);
      continue;
    }
    if (res.status !== 200) fail(`${url} answered ${res.status}: ${await res.text()}`);
    // A dev interaction page: the login form, then the consent form.
    const page = await res.text();
    const prompt = /name="prompt" value="([a-z]+)"/.exec(page)?.[1];
    const action = /<form[^>]*action="([^"]+)"/.exec(page)?.[1];
    if (!prompt || !action) fail(`no interaction form at ${url}: ${page.slice(0, 500)}`);
    const form = prompt === 'login'
      ? { prompt, login: args.user, password: 'any password' }
      : { prompt };
    const submitted = await post(new URL(action, url).href, form);
    url = location(submitted, url);
  }
  return fail('too many redirects');
}

async function logout() {
  const meta = await discover();
  const end = new URL(meta.end_session_endpoint);
  end.search = new URLSearchParams({
    id_token_hint: args.id_token,
    client_id: args.client_id,
  }).toString();
  const res = await browse(end.href);
  if (res.status !== 200) fail(`end_session answered ${res.status}: ${await res.text()}`);
  // The confirmation form: "Yes, sign me out".
  const page = await res.text();
  const action = /<form[^>]*action="([^"]+)"/.exec(page)?.[1];
  const xsrf = /name="xsrf" value="([^"]+)"/.exec(page)?.[1];
  if (!action || !xsrf) fail(`no logout form: ${page.slice(0, 500)}`);
  // The provider answers once every back-channel logout it sent was answered.
  const confirmed = await post(new URL(action, end).href, { xsrf, logout: 'yes' });
  if (confirmed.status !== 303 && confirmed.status !== 302) {
    fail(`end_session confirm answered ${confirmed.status}: ${await confirmed.text()}`);
  }
  return { logged_out: true };
}

const commands = {
  'client-credentials': async () => token(await discover(), {
    grant_type: 'client_credentials', resource: args.resource, scope: args.scope,
  }),
  login,
  logout,
};

if (!commands[command]) fail(`unknown command (one of ${Object.keys(commands).join(', ')})`);
process.stdout.write(`${JSON.stringify(await commands[command]())}\n`);
