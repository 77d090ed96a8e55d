// Runs Bowser over every line of user-agents.txt exactly the way Butler SOS
// (src/lib/udp_handlers/user_events/message-event.js) derives the user-agent
// fields of a user event, and writes ../data/bowser-expected.json.
//
// Usage: npm ci && node generate.mjs   (from tests/bowser/)

import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import Bowser from 'bowser';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const bowserVersion = require('bowser/package.json').version;
const pinned = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8')).dependencies.bowser;
if (bowserVersion !== pinned) {
    throw new Error(`bowser ${bowserVersion} installed but ${pinned} pinned; run npm ci`);
}

// Same as Butler SOS sanitizeField(): strip control characters, cap length.
// (Butler SOS applies it to the whole message field, 1000 chars, of which the
// UA is the tail after "UserAgent:"; no corpus line comes near that.)
function sanitizeField(field, maxLength = 500) {
    if (typeof field !== 'string') {
        return String(field).slice(0, maxLength);
    }
    // eslint-disable-next-line no-control-regex
    return field.replace(/[\x00-\x1F\x7F]/g, '').slice(0, maxLength);
}

// Mirrors message-event.js:
//   let userAgent = msgObj.message.split('UserAgent:')[1];
//   userAgent = userAgent.trim();
//   userAgent = userAgent.replace(/'/g, '');
//   const ua = userAgent.length > 0 ? Bowser.parse(userAgent) : { browser: {}, os: {} };
//   const browserVersion = typeof ua.browser?.version === 'string' ? ua.browser.version : '';
//   const browserMajor = /^(\d+)/.exec(browserVersion)?.[1];
//   msgObj.ua = { browser: { name: ua.browser?.name ?? '', version: browserVersion,
//                            major: browserMajor }, os: ua.os ?? {}, ua: userAgent };
// and the destinations (MQTT, InfluxDB v1/v2/v3, New Relic) only write a field
// when it is truthy:
//   if (msg?.ua?.browser?.name)  -> uaBrowserName         = msg.ua.browser.name
//   if (msg?.ua?.browser?.major) -> uaBrowserMajorVersion = msg.ua.browser.major
//   if (msg?.ua?.os?.name)       -> uaOsName              = msg.ua.os.name
//   if (msg?.ua?.os?.version)    -> uaOsVersion           = msg.ua.os.version
function butlerSosUa(rawUa) {
    const message = sanitizeField(`UserAgent: ${rawUa}`, 1000);
    let userAgent = message.split('UserAgent:')[1];
    userAgent = userAgent.trim();
    userAgent = userAgent.replace(/'/g, '');

    const ua = userAgent.length > 0 ? Bowser.parse(userAgent) : { browser: {}, os: {} };
    const browserVersion = typeof ua.browser?.version === 'string' ? ua.browser.version : '';
    const browserMajor = /^(\d+)/.exec(browserVersion)?.[1];

    const msgUa = {
        browser: { name: ua.browser?.name ?? '', version: browserVersion, major: browserMajor },
        os: ua.os ?? {},
    };

    const orNull = (v) => (v ? v : null);
    return {
        ua: rawUa,
        uaBrowserName: orNull(msgUa.browser.name),
        uaBrowserMajorVersion: orNull(msgUa.browser.major),
        uaOsName: orNull(msgUa.os.name),
        uaOsVersion: orNull(msgUa.os.version),
    };
}

const lines = readFileSync(join(here, 'user-agents.txt'), 'utf8')
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.length > 0);

const out = lines.map(butlerSosUa);
const text = `${JSON.stringify(out, null, 2)}\n`;
if (process.argv.includes('--stdout')) {
    // tests/bowser_names.rs compares this with the committed fixture.
    process.stdout.write(text);
} else {
    const target = join(here, '..', 'data', 'bowser-expected.json');
    writeFileSync(target, text);
    console.log(`bowser ${bowserVersion}: wrote ${out.length} entries to ${target}`);
}
