// A real OpenID provider for the stapes tests: panva's oidc-provider, configured the
// way stapes expects one (see crates/testkit/src/oidc.rs, which starts it).
//
// - HTTPS on 127.0.0.1:PORT, issuer https://127.0.0.1:PORT, certificate from the harness.
// - One public client (no secret): device authorization grant, refresh tokens, and the
//   authorization code flow with PKCE (S256) when redirect URIs are given.
// - Access tokens are RS256 JWTs (typ at+jwt) for AUDIENCE, with `email` and, for the
//   logins named in SUBNETS_JSON, `incus.allowed_subnets`.
// - Built-in login and consent pages (devInteractions): any login and password.
// - POST /_test/rotate signs with a new key from then on; the old keys stay in the JWKS
//   unless `?retire=1`. It answers with the new `kid`.
// - POST /_test/sign with a JSON object of claims answers {"token"}: those claims
//   signed like an access token with the current key.
//
// Environment: PORT, TLS_CERT, TLS_KEY (PEM files), CLIENT_ID, AUDIENCE, REDIRECT_URIS
// and POST_LOGOUT_REDIRECT_URIS (comma-separated), SUBNETS_JSON ({"login": ["cidr"]}),
// ACCESS_TOKEN_TTL (seconds), DEVICE_POLL_INTERVAL (seconds).
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

console.log(`modules loaded after ${Math.round(process.uptime() * 1000)} ms`);
const PORT = Number(process.env.PORT);
const ISSUER = `https://127.0.0.1:${PORT}`;
const CLIENT_ID = process.env.CLIENT_ID || 'stapes-test';
const AUDIENCE = process.env.AUDIENCE || 'https://stapes.test';
const list = (v) => (v || '').split(',').map((s) => s.trim()).filter(Boolean);
const REDIRECT_URIS = list(process.env.REDIRECT_URIS);
const POST_LOGOUT_REDIRECT_URIS = list(process.env.POST_LOGOUT_REDIRECT_URIS);
const SUBNETS = JSON.parse(process.env.SUBNETS_JSON || '{}');
const ACCESS_TOKEN_TTL = Number(process.env.ACCESS_TOKEN_TTL || 3600);
// RFC 8628 makes clients wait 5 s between polls when the response has no interval, and
// oidc-provider sends none: tests would spend most of their time waiting.
const DEVICE_POLL_INTERVAL = Number(process.env.DEVICE_POLL_INTERVAL || 1);

let keyCounter = 0;
function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  keyCounter += 1;
  const kid = `test-${process.pid}-${Date.now()}-${keyCounter}`;
  return { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid };
}

const codeFlow = REDIRECT_URIS.length > 0;
const client = {
  client_id: CLIENT_ID,
  client_name: 'stapes test client',
  token_endpoint_auth_method: 'none',
  grant_types: [
    'urn:ietf:params:oauth:grant-type:device_code',
    'refresh_token',
    ...(codeFlow ? ['authorization_code'] : []),
  ],
  response_types: codeFlow ? ['code'] : [],
  redirect_uris: REDIRECT_URIS,
  post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
};

// Key rotation builds a new Provider with the new key list. Sessions, grants and
// refresh tokens outlive it because cookies are signed with a fixed key and every
// instance stores into the one map below (oidc-provider's own in-memory adapter keeps a
// store per instance). The adapter interface is oidc-provider's documented one.
const cookieKeys = [crypto.randomBytes(32).toString('hex')];
const store = new Map(); // key -> { payload, expiresAt }
const grantMembers = new Map(); // grantId -> Set of keys

function live(key) {
  const e = store.get(key);
  if (!e) return undefined;
  if (e.expiresAt !== undefined && e.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return e.payload;
}

class SharedAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    const key = this.key(id);
    store.set(key, { payload, expiresAt });
    if (this.model === 'Session' && payload.uid) store.set(`sessionUid:${payload.uid}`, { payload: id, expiresAt });
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    const id = live(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = live(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

function build(keys) {
  const provider = new Provider(ISSUER, {
    adapter: SharedAdapter,
    clients: [client],
    jwks: { keys },
    cookies: { keys: cookieKeys },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => AUDIENCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'openid profile email offline_access',
          audience: AUDIENCE,
          accessTokenTTL: ACCESS_TOKEN_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    scopes: ['openid', 'profile', 'email', 'offline_access'],
    claims: { openid: ['sub'], profile: ['name'], email: ['email', 'email_verified'] },
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, name: id, email: `${id}@stapes.test`, email_verified: true };
        },
      };
    },
    async extraTokenClaims(ctx, token) {
      if (!token.accountId) return undefined;
      const claims = { email: `${token.accountId}@stapes.test` };
      if (SUBNETS[token.accountId]) claims['incus.allowed_subnets'] = SUBNETS[token.accountId];
      return claims;
    },
    issueRefreshToken: async (ctx, c, code) => c.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      AuthorizationCode: 600,
      DeviceCode: 600,
      Grant: 86400,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 86400,
    },
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  provider.on('grant.success', (ctx) => console.log('grant.success', ctx.oidc.params.grant_type));
  provider.on('grant.error', (ctx, err) => console.log('grant.error', ctx.oidc.params?.grant_type, err.message, err.error_detail || ''));
  // The event is emitted synchronously with the response body, before it is sent.
  provider.on('device_authorization.success', (ctx, body) => {
    body.interval = DEVICE_POLL_INTERVAL;
  });
  return { provider, callback: provider.callback() };
}

let keys = [newKey()];
let current = build(keys);

// Any claims, signed like an access token with the current key: for tests of a
// verifier's checks on claims (expiry, audience, issuer) behind a valid signature.
function signWithCurrentKey(claims) {
  const [key] = keys;
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${b64({ alg: 'RS256', typ: 'at+jwt', kid: key.kid })}.${b64(claims)}`;
  const signature = crypto.sign('sha256', Buffer.from(input), crypto.createPrivateKey({ key, format: 'jwk' }));
  return `${input}.${signature.toString('base64url')}`;
}

function rotate(retire) {
  const key = newKey();
  keys = retire ? [key] : [key, ...keys];
  current = build(keys);
  console.log(`rotated: signing with ${key.kid}, publishing ${keys.map((k) => k.kid).join(' ')}`);
  return key.kid;
}

const server = https.createServer(
  { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) },
  (req, res) => {
    const path = req.url.split('?')[0];
    res.on('finish', () => console.log(`${req.method} ${path} ${res.statusCode}`));
    if (req.method === 'POST' && path === '/_test/rotate') {
      const kid = rotate(req.url.includes('retire=1'));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kid }));
      return;
    }
    if (req.method === 'POST' && path === '/_test/sign') {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        try {
          const token = signWithCurrentKey(JSON.parse(Buffer.concat(chunks).toString() || '{}'));
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ token }));
        } catch (err) {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: String(err) }));
        }
      });
      return;
    }
    current.callback(req, res);
  },
);
server.on('error', (err) => {
  console.error(`listen failed: ${err.code || err.message}`);
  process.exit(2);
});
server.listen(PORT, '127.0.0.1', () => {
  console.log(`listening after ${Math.round(process.uptime() * 1000)} ms: issuer ${ISSUER}, client ${CLIENT_ID}, audience ${AUDIENCE}, kid ${keys[0].kid}`);
});
