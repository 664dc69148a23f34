// A real OpenID provider for the directory login tests (tests/oidc_provider.py starts it):
// the certified oidc-provider on 127.0.0.1, with its development login page (any password
// is accepted for a known account) and open dynamic client registration, so each test
// registers a client with its own redirect URI. Never use this configuration elsewhere.
//
// Usage: node server.js PORT
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;

// The test accounts: "anna" is in the office's group, "bernd" is not.
const accounts = {
  anna: {
    name: 'Anna Äpfelbäum',
    email: 'anna@kreis.example',
    groups: ['notifier-buero', 'alle'],
  },
  bernd: { name: 'Bernd Brück', email: 'bernd@kreis.example', groups: ['alle'] },
};

const provider = new Provider(issuer, {
  clients: [],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
  // The claims of the requested scopes go into the ID token too (as Keycloak does).
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
  },
  pkce: { required: () => true },
  cookies: { keys: ['notifier-test-only-cookie-key'] },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: id,
          name: account.name,
          email: account.email,
          email_verified: true,
          groups: account.groups,
        };
      },
    };
  },
});
provider.proxy = false;
provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});
