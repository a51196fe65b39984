"""Where does the untrained SmolLM2 hold the maze's tiles? Linear probes per layer (docs/training_results.md).

Two probes on 24 expert episodes (360 decisions): at the decision token, "the tile to direction d is Mold";
at the last token of each clause's emoji, which direction the clause names and which tile it shows.

    python docs/diagnostics/tile_probe.py
"""

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from training import load_base_model, maze_config, recipe_args
from training.expert_data import expert_episodes

torch.set_num_threads(2)
args = recipe_args("cpu")
model, tok = load_base_model(args)
model.eval()
eps = expert_episodes(tok, seeds=list(range(5000, 5024)), config=maze_config(args), horizon=1, expert_seed=1)
words = ["north", "east", "south", "west"]
dir_words = {tok(" " + w, add_special_tokens=False)["input_ids"][0]: i for i, w in enumerate(words)}
final_x, final_y, emo_x, emo_dir, emo_tile = [], [], [], [], []
with torch.no_grad():
    for i in range(len(eps.seeds)):
        ids = eps.input_ids[i][eps.attention_mask[i].bool()][None]
        hidden = torch.stack(model(ids, output_hidden_states=True).hidden_states)[:, 0]  # (L+1, n, d)
        tokens = ids[0].tolist()
        previous = 0
        for t, p in enumerate(eps.action_positions[i].tolist()):
            final_x.append(hidden[:, p].numpy())
            final_y.append(eps.neighbours[i, t].numpy())
            for j in range(previous, p):  # " north", " there", " is", then the emoji's 3 tokens
                if tokens[j] in dir_words and j + 6 < p:
                    d = dir_words[tokens[j]]
                    emo_x.append(hidden[:, j + 5].numpy())
                    emo_dir.append(d)
                    emo_tile.append(int(eps.neighbours[i, t, d]))
            previous = p
final_x, final_y = np.stack(final_x), np.stack(final_y)
emo_x, emo_dir, emo_tile = np.stack(emo_x), np.array(emo_dir), np.array(emo_tile)
print("decisions", len(final_x), "clauses", len(emo_x))


def probe(x, y, scoring="accuracy", balanced=False):
    clf = LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced" if balanced else None)
    return cross_val_score(clf, x, y, cv=4, scoring=scoring).mean()


for layer in [0, 4, 8, 12, 16, 20, 22, 24, 26, 28, 30]:
    mold = [probe(final_x[:, layer], final_y[:, d] == 1, "balanced_accuracy", True) for d in range(4)]
    print(
        f"L{layer:2d} decision token 'd is Mold' balanced acc {np.round(mold, 2)}; emoji token: "
        f"direction acc {probe(emo_x[:, layer], emo_dir):.2f}, tile acc {probe(emo_x[:, layer], emo_tile):.2f}"
    )
