"""The arrays of one batch: the contract between `data/` (which builds them) and `model/`.

A batch is a dict of arrays with a leading batch axis B. Text keys are always there;
each media family appears only when some example in the batch has that kind of media.

Text (T = sequence length):
  tokens        int32[B, T]    input ids; media positions hold the placeholder ids of
                               `ModelConfig` (image_token_id, frame_token_id, audio_token_id)
  targets       int32[B, T]    the id to predict at each position (tokens shifted left)
  loss_mask     float32[B, T]  1.0 where the target counts towards the loss
  segment_ids   int32[B, T]    packed document id, 1, 2, ...; 0 marks padding
  positions     int32[B, T]    position inside the segment (RoPE), from 0
  media_spans   int32[B, T]    0 outside media; the soft tokens of one image, one video
                               frame or one audio clip share an id > 0, unique in the row
                               (with ModelConfig.prompt_attention="bidirectional", so do
                               all tokens of an unscored user turn, its media included).
                               Attention is bidirectional inside a span.

Images (I image slots per row, P patches per image; unused slots and patches are masked):
  image_patches     float32[B, I, P, patch_dim]  pixels in [-1, 1], each patch flattened
                                                 (row, column, channel) in that order
  image_coords      int32[B, I, P, 2]            (row, column) of each patch in its grid
  image_patch_mask  bool[B, I, P]                True for real patches; an image slot with
                                                 no real patch is padding

Video frames (the frames of all videos of a row, in order; one span per frame):
  frame_patches, frame_coords, frame_patch_mask  as for images, shapes [B, F, Pf, ...]

Audio (C clips per row, M log-mel frames each):
  audio_mels      float32[B, C, M, num_mels]  log-mel features (data/media.py)
  audio_mel_mask  bool[B, C, M]               True for real frames (a prefix of each clip);
                                              a clip with no real frame is padding

Soft tokens fill placeholders in order: the k-th `image_token_id` of a row receives the
k-th soft token of that row's real images, concatenated in slot order (likewise frames
and audio, where a clip of n samples gives `AudioConfig.num_soft_tokens(n)` tokens).
"""

TEXT_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "media_spans")
IMAGE_KEYS = ("image_patches", "image_coords", "image_patch_mask")
FRAME_KEYS = ("frame_patches", "frame_coords", "frame_patch_mask")
AUDIO_KEYS = ("audio_mels", "audio_mel_mask")
ALL_KEYS = TEXT_KEYS + IMAGE_KEYS + FRAME_KEYS + AUDIO_KEYS
