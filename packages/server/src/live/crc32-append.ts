/**
 * CRC-32 (the gzip trailer's checksum) of data followed by a known block, from the data's CRC
 * alone: the block's bytes are not read again.
 *
 * A CRC is the remainder of the data's polynomial modulo the CRC's polynomial (bits reflected,
 * the register preset and inverted). Appending n bytes multiplies the data's part by x^(8n), and
 * the preset and inversion cancel out, so crc(a ‖ b) = crc(a)·x^(8·|b|) mod P  ⊕  crc(b). The
 * multiplication by a fixed x^(8·|b|) is linear in crc(a): eight tables of sixteen entries, one
 * per four bits of crc(a), make it eight lookups.
 */

/** The CRC-32 polynomial, bits reflected (x^0 in the top bit). */
const POLYNOMIAL = 0xedb88320;
/** x^0 (one), reflected. */
const ONE = 0x80000000;

/** `value`·x mod P. */
function timesX(value: number): number {
  return value & 1 ? (value >>> 1) ^ POLYNOMIAL : value >>> 1;
}

/** a·b mod P. */
function multiply(a: number, b: number): number {
  let product = 0;
  for (let bit = ONE; bit !== 0 && a !== 0; bit >>>= 1) {
    if (a & bit) {
      product ^= b;
      a ^= bit;
    }
    b = timesX(b);
  }
  return product >>> 0;
}

/** x^(2^k) mod P for k = 0…31: x^(8n) is the product of those of n's bits (times 8). */
const X_TO_2_TO = new Uint32Array(32);
X_TO_2_TO[0] = ONE >>> 1;
for (let k = 1; k < 32; k++) X_TO_2_TO[k] = multiply(X_TO_2_TO[k - 1] as number, X_TO_2_TO[k - 1] as number);

/** x^(8·`bytes`) mod P. */
function xToBytes(bytes: number): number {
  let power = ONE;
  // 8·bytes = bytes·2^3: bit j of `bytes` stands for x^(2^(j+3)).
  for (let n = bytes, k = 3; n > 0; n = Math.floor(n / 2), k++)
    if (n & 1) power = multiply(X_TO_2_TO[k & 31] as number, power);
  return power;
}

/** How a CRC-32 changes when `length` bytes whose own CRC-32 is `crc` are appended. */
export class Crc32Append {
  /** Entry 16·k + v: x^(8·length) times the four bits v at nibble k of a CRC (its low bits first). */
  private readonly table = new Uint32Array(128);

  constructor(
    readonly crc: number,
    readonly length: number,
  ) {
    // Column j: x^(8·length) times the bit of x^j, which is bit 31 - j of a reflected CRC.
    const columns = new Uint32Array(32);
    let column = xToBytes(length);
    for (let j = 0; j < 32; j++) {
      columns[31 - j] = column;
      column = timesX(column);
    }
    const table = this.table;
    for (let nibble = 0; nibble < 8; nibble++) {
      const at = nibble * 16;
      for (let value = 1; value < 16; value++) {
        const low = value & -value;
        const bit = 31 - Math.clz32(low);
        table[at + value] = (table[at + (value ^ low)] as number) ^ (columns[nibble * 4 + bit] as number);
      }
    }
  }

  /** The CRC-32 of data whose CRC-32 is `before`, followed by these bytes. */
  after(before: number): number {
    const t = this.table;
    return (
      ((t[before & 15] as number) ^
        (t[16 + ((before >>> 4) & 15)] as number) ^
        (t[32 + ((before >>> 8) & 15)] as number) ^
        (t[48 + ((before >>> 12) & 15)] as number) ^
        (t[64 + ((before >>> 16) & 15)] as number) ^
        (t[80 + ((before >>> 20) & 15)] as number) ^
        (t[96 + ((before >>> 24) & 15)] as number) ^
        (t[112 + (before >>> 28)] as number) ^
        this.crc) >>>
      0
    );
  }
}
