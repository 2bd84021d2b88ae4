"""Log-mel -> audio: vocoders (Griffin-Lim, HiFi-GAN) behind one interface, and copy synthesis."""
