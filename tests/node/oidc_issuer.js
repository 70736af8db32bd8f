// A real OIDC provider (npm oidc-provider) for tests/test_oidc_provider.py.
//
// usage: node oidc_issuer.js PORT
// Serves issuer http://127.0.0.1:PORT with one confidential client
// (mcp-agent / mcp-agent-secret) allowed the client_credentials grant; a token
// request with resource=urn:pgwarden (or urn:other-api, for the wrong-audience
// case) gets a JWT access token for that audience. Prints READY when listening.

'use strict';

// CommonJS (this package has no "type": "module"); oidc-provider is ESM-only,
// hence the dynamic import.
const { generateKeyPairSync } = require('node:crypto');

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node oidc_issuer.js PORT');
  process.exit(2);
}

const RESOURCES = new Set(['urn:pgwarden', 'urn:other-api']);
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });

async function main() {
  const { default: Provider, errors } = await import('oidc-provider');
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [{
      client_id: 'mcp-agent',
      client_secret: 'mcp-agent-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    cookies: { keys: ['test-only-cookie-key'] },
    ttl: { ClientCredentials: 300 },
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'test-rsa', use: 'sig', alg: 'RS256' }] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          if (!RESOURCES.has(resourceIndicator)) throw new errors.InvalidTarget();
          return {
            scope: 'db:read',
            audience: resourceIndicator,
            accessTokenTTL: 300,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });

  const server = provider.listen(port, '127.0.0.1', () => {
    process.stdout.write('READY\n');
  });

  process.on('SIGTERM', () => server.close() && process.exit(0));
  process.on('SIGINT', () => server.close() && process.exit(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
